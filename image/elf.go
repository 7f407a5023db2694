package image

import (
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
)

// ErrBinary is wrapped by the errors of CheckBinary.
var ErrBinary = errors.New("unusable binary")

// elfArch maps an ELF machine (and, where it matters, class and byte order)
// to a GOARCH.
func elfArch(f *elf.File) string {
	switch f.Machine {
	case elf.EM_X86_64:
		return "amd64"
	case elf.EM_AARCH64:
		return "arm64"
	case elf.EM_386:
		return "386"
	case elf.EM_ARM:
		return "arm"
	case elf.EM_RISCV:
		if f.Class == elf.ELFCLASS64 {
			return "riscv64"
		}
	case elf.EM_PPC64:
		if f.ByteOrder == binary.LittleEndian {
			return "ppc64le"
		}
		return "ppc64"
	case elf.EM_S390:
		return "s390x"
	case elf.EM_LOONGARCH:
		return "loong64"
	}
	return ""
}

// CheckBinary checks that the file at path is a Linux executable that runs
// in an image without a C library: an ELF executable without a program
// interpreter (a static binary, as `CGO_ENABLED=0 go build` makes). It
// returns the binary's GOARCH, or an error wrapping ErrBinary.
func CheckBinary(path string) (goarch string, err error) {
	f, err := elf.Open(path)
	if err != nil {
		// Opening fails with a *fs.PathError; anything else is the
		// contents: not ELF, or cut short.
		var pe *fs.PathError
		if errors.As(err, &pe) {
			return "", err
		}
		return "", fmt.Errorf("%w: %s is not an ELF executable: %w", ErrBinary, path, err)
	}
	defer f.Close()
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return "", fmt.Errorf("%w: %s is an ELF %s, not an executable", ErrBinary, path, f.Type)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return "", fmt.Errorf("%w: %s is dynamically linked (it needs a C library the image does not have); build it with CGO_ENABLED=0", ErrBinary, path)
		}
	}
	if f.Type == elf.ET_DYN && f.Entry == 0 {
		return "", fmt.Errorf("%w: %s is a shared library, not an executable", ErrBinary, path)
	}
	arch := elfArch(f)
	if arch == "" {
		return "", fmt.Errorf("%w: %s is for an unknown machine %s", ErrBinary, path, f.Machine)
	}
	return arch, nil
}
