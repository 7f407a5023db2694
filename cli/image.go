package cli

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"twill.dev/twill/image"
	"twill.dev/twill/internal/atomicfile"
	"twill.dev/twill/manifest"
)

func init() {
	commandAdders = append(commandAdders, func(root *cobra.Command, _ *globals) {
		root.AddCommand(newImageCmd())
	})
}

// Where the image holds the binaries, and its defaults.
const (
	imageTwill    = "/usr/local/bin/twill"
	imageTwillCNI = "/usr/local/bin/twill-cni"
	imagePATH     = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

func newImageCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Build Twill's container image without a container engine",
		Args:  groupArgs,
		RunE:  groupRun,
	}
	cmd.AddCommand(newImageBuildCmd())
	return cmd
}

// imageBuildOptions are the flags of `twill image build`.
type imageBuildOptions struct {
	format, name, twill, twillCNI, output string
}

func newImageBuildCmd() *cobra.Command {
	var o imageBuildOptions
	cmd := &cobra.Command{
		Use:   "build -o FILE",
		Short: "Write a container image of twill and twill-cni to a tar file",
		Long: `image build writes a container image holding the twill and twill-cni
binaries to a tar file, without Docker, containerd or a registry. The image has
one layer: ` + imageTwill + `, ` + imageTwillCNI + ` (mode 0755),
their parent directories and /tmp (mode 1777), owned by root; its entrypoint is
` + imageTwill + `, its command "node run", its PATH includes /usr/local/bin
(the DaemonSet of ` + "`twill manifest`" + ` runs "twill install-cni" and "twill node run"),
and its platform linux and the binaries' architecture.

--format docker (the default) writes the archive of ` + "`docker save`" + `, which
` + "`docker load`" + ` and ` + "`ctr images import`" + ` read; --format oci writes an OCI image
layout (gzip-compressed layer), which ` + "`ctr images import`" + `, podman and skopeo read.

twill is the running binary unless --twill says otherwise; twill-cni is the
one next to twill, else bin/twill-cni. Both must be statically linked Linux
executables of the same architecture (CGO_ENABLED=0 go build -trimpath ...),
since the image has no C library.

The output is reproducible: every time stamp is SOURCE_DATE_EPOCH (the Unix
epoch when unset), so the same binaries give the same bytes and image ID. The
file is written to a temporary file and renamed into place.`,
		Example: `  CGO_ENABLED=0 go build -trimpath -o bin/twill ./cmd/twill
  CGO_ENABLED=0 go build -trimpath -o bin/twill-cni ./cmd/twill-cni
  bin/twill image build -o twill-image.tar
  ctr -n k8s.io images import twill-image.tar   # on each node, for the kubelet
  twill image build --format oci --name registry.example/twill:v1.2.3 --twill bin/twill -o twill-oci.tar`,
		Args: usage(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runImageBuild(cmd, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.format, "format", string(image.FormatDocker), "archive format: docker (docker save / ctr images import) or oci (OCI image layout)")
	f.StringVar(&o.name, "name", manifest.DefaultImage+":"+Version, "image name and tag")
	f.StringVar(&o.twill, "twill", "", "the twill binary (default: this binary)")
	f.StringVar(&o.twillCNI, "twill-cni", "", "the twill-cni binary (default: twill-cni next to twill, else bin/twill-cni)")
	f.StringVarP(&o.output, "output", "o", "", "the tar file to write (required)")
	return cmd
}

func runImageBuild(cmd *cobra.Command, o imageBuildOptions) error {
	format := image.Format(o.format)
	if format != image.FormatDocker && format != image.FormatOCI {
		return usageErr(fmt.Errorf("--format %q: want %s or %s", o.format, image.FormatDocker, image.FormatOCI))
	}
	if o.output == "" {
		return usageErr(errors.New("--output (-o) is required: the tar file to write"))
	}
	if _, _, _, err := image.ParseName(o.name); err != nil {
		return usageErr(fmt.Errorf("--name: %w", err))
	}
	twill := o.twill
	if twill == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find the running twill binary (give --twill): %w", err)
		}
		if resolved, err := filepath.EvalSymlinks(exe); err == nil {
			exe = resolved
		}
		twill = exe
	}
	cni := o.twillCNI
	if cni == "" {
		var err error
		if cni, err = findTwillCNI(twill); err != nil {
			return err
		}
	}
	arch, err := checkImageBinary("--twill", twill)
	if err != nil {
		return err
	}
	cniArch, err := checkImageBinary("--twill-cni", cni)
	if err != nil {
		return err
	}
	if arch != cniArch {
		return fmt.Errorf("%s is for %s but %s is for %s: build both for the same GOARCH", twill, arch, cni, cniArch)
	}
	created, err := image.SourceDateEpoch(os.Getenv)
	if err != nil {
		return err
	}
	spec := image.Spec{
		Name:   o.name,
		Format: format,
		Files: []image.File{
			{Path: imageTwill, Mode: 0o755, Source: twill},
			{Path: imageTwillCNI, Mode: 0o755, Source: cni},
			{Path: "/tmp", Mode: fs.ModeDir | fs.ModeSticky | 0o777},
		},
		Entrypoint:   []string{imageTwill},
		Cmd:          []string{"node", "run"},
		Env:          []string{imagePATH},
		Labels:       map[string]string{"org.opencontainers.image.title": "twill", "org.opencontainers.image.version": Version},
		Architecture: arch,
		Created:      created,
	}
	var res image.Result
	err = atomicfile.Write(o.output, 0o644, func(f io.Writer) error {
		bw := bufio.NewWriterSize(f, 1<<20)
		var err error
		if res, err = image.Build(bw, spec); err != nil {
			return err
		}
		return bw.Flush()
	})
	if err != nil {
		return err
	}
	load := "ctr -n k8s.io images import " + o.output + "  or  docker load -i " + o.output
	fmt.Fprintf(cmd.OutOrStdout(), "wrote %s: image %s (%s, linux/%s), id %s\nload it with: %s\n",
		o.output, res.Name, formatName(format), arch, res.ImageID, load)
	return nil
}

// formatName describes an archive format.
func formatName(f image.Format) string {
	if f == image.FormatOCI {
		return "OCI image layout"
	}
	return "docker archive"
}

// findTwillCNI returns twill-cni next to twill, else bin/twill-cni.
func findTwillCNI(twill string) (string, error) {
	candidates := []string{filepath.Join(filepath.Dir(twill), "twill-cni"), filepath.Join("bin", "twill-cni")}
	for _, c := range candidates {
		if _, err := os.Stat(c); err == nil {
			return c, nil
		}
	}
	return "", fmt.Errorf("no twill-cni binary at %s: build it with `CGO_ENABLED=0 go build -trimpath -o %s ./cmd/twill-cni`, or give --twill-cni: %w",
		strings.Join(candidates, " or "), candidates[0], fs.ErrNotExist)
}

// checkImageBinary checks that the binary a flag names can run in the image
// and returns its architecture.
func checkImageBinary(flag, path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", flag, err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("%s: %s is not a regular file", flag, path)
	}
	arch, err := image.CheckBinary(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", flag, err)
	}
	return arch, nil
}
