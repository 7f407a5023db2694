// Package image builds a single-layer container image from files on disk,
// without a container engine or a registry, as a tar archive in one of two
// formats: the docker archive that `docker save` writes and `docker load`
// and `ctr images import` read (manifest.json, the config and an
// uncompressed layer tar), or an OCI image layout (oci-layout, index.json
// and blobs/sha256, with a gzip-compressed layer), which `ctr images
// import`, podman and skopeo read.
//
// The output is reproducible: every entry of the layer and of the archive
// has the same modification time (Spec.Created, the Unix epoch by default),
// uid and gid 0 and no user or group names, entries are sorted by path, and
// no other metadata of the source files is recorded, so building the same
// files twice gives the same bytes.
package image

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Format is the layout of the archive Build writes.
type Format string

const (
	// FormatDocker is the docker archive of `docker save`: manifest.json,
	// <config digest>.json and <diff id>/layer.tar (uncompressed).
	FormatDocker Format = "docker"
	// FormatOCI is an OCI image layout: oci-layout, index.json and
	// blobs/sha256/<digest>, with a gzip-compressed layer.
	FormatOCI Format = "oci"
)

// Formats are the formats Build writes.
var Formats = []Format{FormatDocker, FormatOCI}

// Media types of the OCI image specification.
const (
	MediaTypeIndex    = "application/vnd.oci.image.index.v1+json"
	MediaTypeManifest = "application/vnd.oci.image.manifest.v1+json"
	MediaTypeConfig   = "application/vnd.oci.image.config.v1+json"
	MediaTypeLayerGz  = "application/vnd.oci.image.layer.v1.tar+gzip"
)

// Annotations of the index.json entry of an OCI layout: containerd names
// the imported image after AnnotationImageName; AnnotationRefName holds
// the tag, as `docker save` writes it.
const (
	AnnotationImageName = "io.containerd.image.name"
	AnnotationRefName   = "org.opencontainers.image.ref.name"
)

// ErrSpec is wrapped by every error Build returns for an invalid Spec.
var ErrSpec = errors.New("invalid image spec")

// File is one file or directory of the image's layer.
type File struct {
	// Path is the absolute, clean path in the image, e.g.
	// /usr/local/bin/twill.
	Path string
	// Mode holds the permission bits, plus fs.ModeDir for a directory and
	// optionally fs.ModeSticky, fs.ModeSetuid and fs.ModeSetgid. Zero
	// permission bits mean the Source file's permissions, 0644 for Data
	// and 0755 for a directory.
	Mode fs.FileMode
	// Source is a regular file on disk whose contents the image file
	// gets. Empty means Data.
	Source string
	// Data is the file's contents when Source is empty.
	Data []byte
}

// Spec describes an image.
type Spec struct {
	// Name is the image reference REPOSITORY[:TAG], e.g.
	// twill.dev/twill:v0.2.0; the tag defaults to latest.
	Name string
	// Format is the archive's layout; empty means FormatDocker.
	Format Format
	// Files are the layer's files and directories. Parent directories
	// not listed are added with mode 0755.
	Files []File
	// Entrypoint, Cmd, Env and WorkingDir are the container defaults of
	// the image's config.
	Entrypoint []string
	Cmd        []string
	Env        []string
	WorkingDir string
	// Labels are the image's labels.
	Labels map[string]string
	// Architecture is the GOARCH the image runs on; empty means
	// runtime.GOARCH. The OS is always linux.
	Architecture string
	// Created is the image's creation time and every entry's modification
	// time, truncated to seconds; zero means the Unix epoch.
	Created time.Time
}

// Result describes what Build wrote.
type Result struct {
	// Name is the image's reference with its tag, as given or with
	// :latest added.
	Name string
	// ImageID is the digest of the config (what `docker images` shows).
	ImageID string
	// ManifestDigest is the digest of the OCI manifest (FormatOCI only).
	ManifestDigest string
	// LayerDigest is the digest of the layer as stored in the archive;
	// DiffID the digest of the uncompressed layer (the same for
	// FormatDocker).
	LayerDigest string
	DiffID      string
	// LayerSize is the size of the layer as stored.
	LayerSize int64
}

// Config is the subset of the OCI image configuration Build writes.
type Config struct {
	Created      string            `json:"created"`
	Architecture string            `json:"architecture"`
	OS           string            `json:"os"`
	Config       ContainerDefaults `json:"config"`
	RootFS       RootFS            `json:"rootfs"`
	History      []History         `json:"history"`
}

// ContainerDefaults are the config's container defaults.
type ContainerDefaults struct {
	Env        []string          `json:"Env,omitempty"`
	Entrypoint []string          `json:"Entrypoint,omitempty"`
	Cmd        []string          `json:"Cmd,omitempty"`
	WorkingDir string            `json:"WorkingDir,omitempty"`
	Labels     map[string]string `json:"Labels,omitempty"`
}

// RootFS lists the digests of the uncompressed layers.
type RootFS struct {
	Type    string   `json:"type"`
	DiffIDs []string `json:"diff_ids"`
}

// History is one step of the config's history.
type History struct {
	Created   string `json:"created"`
	CreatedBy string `json:"created_by"`
}

// Descriptor points at a blob of an OCI layout.
type Descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Platform    *Platform         `json:"platform,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// Platform is a descriptor's platform.
type Platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

// Manifest is an OCI image manifest.
type Manifest struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Config        Descriptor   `json:"config"`
	Layers        []Descriptor `json:"layers"`
}

// Index is an OCI image index (index.json).
type Index struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Manifests     []Descriptor `json:"manifests"`
}

// DockerManifest is one entry of a docker archive's manifest.json.
type DockerManifest struct {
	Config   string
	RepoTags []string
	Layers   []string
}

// SourceDateEpoch returns the time SOURCE_DATE_EPOCH (read with getenv)
// gives in seconds since the Unix epoch, or the epoch when it is unset.
func SourceDateEpoch(getenv func(string) string) (time.Time, error) {
	v := strings.TrimSpace(getenv("SOURCE_DATE_EPOCH"))
	if v == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return time.Time{}, fmt.Errorf("%w: SOURCE_DATE_EPOCH=%q is not a number of seconds since 1970", ErrSpec, v)
	}
	return time.Unix(n, 0).UTC(), nil
}

// Build writes the image s describes to w as a tar archive in s.Format.
// The layer is staged in a temporary file, so that the archive can give its
// size and digest before its contents.
func Build(w io.Writer, s Spec) (Result, error) {
	p, err := prepare(s)
	if err != nil {
		return Result{}, err
	}
	tmp, err := os.CreateTemp("", "twill-image-layer-*")
	if err != nil {
		return Result{}, fmt.Errorf("stage the layer: %w", err)
	}
	defer func() {
		tmp.Close()
		os.Remove(tmp.Name())
	}()
	l, err := writeLayer(tmp, p.entries, p.created, p.format == FormatOCI)
	if err != nil {
		return Result{}, err
	}
	res := Result{Name: p.name, LayerDigest: l.digest, DiffID: l.diffID, LayerSize: l.size}
	created := p.created.Format(time.RFC3339)
	cfg := Config{
		Created:      created,
		Architecture: p.arch,
		OS:           "linux",
		Config: ContainerDefaults{
			Env: s.Env, Entrypoint: s.Entrypoint, Cmd: s.Cmd, WorkingDir: s.WorkingDir, Labels: s.Labels,
		},
		RootFS:  RootFS{Type: "layers", DiffIDs: []string{l.diffID}},
		History: []History{{Created: created, CreatedBy: "twill image build"}},
	}
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		return Result{}, fmt.Errorf("encode the image config: %w", err)
	}
	res.ImageID = digestOf(cfgJSON)
	a := &archive{tw: tar.NewWriter(w), mtime: p.created}
	layer := func(name string) entry {
		return entry{name: name, size: l.size, open: func() (io.Reader, error) {
			_, err := tmp.Seek(0, io.SeekStart)
			return tmp, err
		}}
	}
	var entries []entry
	switch p.format {
	case FormatDocker:
		layerDir := hexOf(l.diffID)
		cfgName := hexOf(res.ImageID) + ".json"
		mf, err := json.Marshal([]DockerManifest{{Config: cfgName, RepoTags: []string{p.name}, Layers: []string{layerDir + "/layer.tar"}}})
		if err != nil {
			return Result{}, fmt.Errorf("encode manifest.json: %w", err)
		}
		entries = []entry{bytesEntry(cfgName, cfgJSON), {name: layerDir + "/", dir: true}, layer(layerDir + "/layer.tar"), bytesEntry("manifest.json", mf)}
	case FormatOCI:
		m := Manifest{
			SchemaVersion: 2,
			MediaType:     MediaTypeManifest,
			Config:        Descriptor{MediaType: MediaTypeConfig, Digest: res.ImageID, Size: int64(len(cfgJSON))},
			Layers:        []Descriptor{{MediaType: MediaTypeLayerGz, Digest: l.digest, Size: l.size}},
		}
		mJSON, err := json.Marshal(m)
		if err != nil {
			return Result{}, fmt.Errorf("encode the image manifest: %w", err)
		}
		res.ManifestDigest = digestOf(mJSON)
		idx, err := json.Marshal(Index{SchemaVersion: 2, MediaType: MediaTypeIndex, Manifests: []Descriptor{{
			MediaType: MediaTypeManifest, Digest: res.ManifestDigest, Size: int64(len(mJSON)),
			Platform:    &Platform{Architecture: p.arch, OS: "linux"},
			Annotations: map[string]string{AnnotationImageName: p.fullName, AnnotationRefName: p.tag},
		}}})
		if err != nil {
			return Result{}, fmt.Errorf("encode index.json: %w", err)
		}
		entries = []entry{
			{name: "blobs/", dir: true}, {name: "blobs/sha256/", dir: true},
			bytesEntry("blobs/sha256/"+hexOf(res.ImageID), cfgJSON),
			bytesEntry("blobs/sha256/"+hexOf(res.ManifestDigest), mJSON),
			layer("blobs/sha256/" + hexOf(l.digest)),
			bytesEntry("index.json", idx),
			bytesEntry("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)),
		}
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].name < entries[j].name })
	for _, e := range entries {
		if err := a.add(e); err != nil {
			return Result{}, err
		}
	}
	if err := a.tw.Close(); err != nil {
		return Result{}, fmt.Errorf("write the archive: %w", err)
	}
	return res, nil
}

// prepared is a validated Spec.
type prepared struct {
	name, fullName, tag string
	format              Format
	arch                string
	created             time.Time
	entries             []layerEntry
}

// layerEntry is one entry of the layer tar.
type layerEntry struct {
	name   string // relative, no leading slash; directories end in "/"
	dir    bool
	mode   int64 // tar mode bits
	source string
	data   []byte
}

var (
	// repoComponent is one path component of a repository name.
	repoComponent = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$`)
	// domainRE is a registry host with an optional port.
	domainRE = regexp.MustCompile(`^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?$`)
	tagRE    = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
	archRE   = regexp.MustCompile(`^[a-z0-9]+$`)
)

// ParseName splits an image reference REPOSITORY[:TAG] into the
// repository and the tag (latest when absent) and returns the name
// containerd gives it (docker.io/library/ added to short names), or an
// error wrapping ErrSpec. References by digest are refused: an archive
// names its images by tag.
func ParseName(name string) (repo, tag, full string, err error) {
	bad := func(why string) (string, string, string, error) {
		return "", "", "", fmt.Errorf("%w: image name %q: %s (want e.g. twill.dev/twill:v0.2.0)", ErrSpec, name, why)
	}
	if name == "" {
		return bad("empty")
	}
	if strings.Contains(name, "@") {
		return bad("a digest cannot name an image in an archive; give a tag")
	}
	repo, tag = name, "latest"
	if i := strings.LastIndex(name, ":"); i > strings.LastIndex(name, "/") {
		repo, tag = name[:i], name[i+1:]
	}
	if !tagRE.MatchString(tag) {
		return bad("bad tag " + strconv.Quote(tag))
	}
	parts := strings.Split(repo, "/")
	domain := ""
	if len(parts) > 1 && (strings.ContainsAny(parts[0], ".:") || parts[0] == "localhost") {
		domain, parts = parts[0], parts[1:]
		if !domainRE.MatchString(domain) {
			return bad("bad registry host " + strconv.Quote(domain))
		}
	}
	for _, c := range parts {
		if !repoComponent.MatchString(c) {
			return bad("bad repository component " + strconv.Quote(c) + " (lowercase letters, digits and . _ - only)")
		}
	}
	path := strings.Join(parts, "/")
	if domain == "" {
		domain = "docker.io"
		if len(parts) == 1 {
			path = "library/" + path
		}
	}
	return repo, tag, domain + "/" + path + ":" + tag, nil
}

func prepare(s Spec) (prepared, error) {
	var p prepared
	repo, tag, full, err := ParseName(s.Name)
	if err != nil {
		return p, err
	}
	p.name, p.tag, p.fullName = repo+":"+tag, tag, full
	switch s.Format {
	case "":
		p.format = FormatDocker
	case FormatDocker, FormatOCI:
		p.format = s.Format
	default:
		return p, fmt.Errorf("%w: format %q (want %s or %s)", ErrSpec, s.Format, FormatDocker, FormatOCI)
	}
	p.arch = s.Architecture
	if p.arch == "" {
		p.arch = runtime.GOARCH
	}
	if !archRE.MatchString(p.arch) {
		return p, fmt.Errorf("%w: architecture %q", ErrSpec, p.arch)
	}
	p.created = time.Unix(0, 0).UTC()
	if !s.Created.IsZero() {
		if s.Created.Before(p.created) {
			return p, fmt.Errorf("%w: created %s is before 1970", ErrSpec, s.Created)
		}
		p.created = s.Created.UTC().Truncate(time.Second)
	}
	if len(s.Files) == 0 {
		return p, fmt.Errorf("%w: no files", ErrSpec)
	}
	byPath := map[string]layerEntry{}
	for _, f := range s.Files {
		e, err := fileEntry(f)
		if err != nil {
			return p, err
		}
		key := strings.TrimSuffix(e.name, "/")
		if _, dup := byPath[key]; dup {
			return p, fmt.Errorf("%w: %s is listed twice", ErrSpec, f.Path)
		}
		byPath[key] = e
	}
	// Add the missing parents, and refuse a file that is another's parent.
	for key := range byPath {
		for dir := path.Dir(key); dir != "."; dir = path.Dir(dir) {
			if e, ok := byPath[dir]; ok {
				if !e.dir {
					return p, fmt.Errorf("%w: /%s is a file but /%s is under it", ErrSpec, dir, key)
				}
				continue
			}
			byPath[dir] = layerEntry{name: dir + "/", dir: true, mode: 0o755}
		}
	}
	for _, e := range byPath {
		p.entries = append(p.entries, e)
	}
	// Sorting on the path without the directory slash puts a directory
	// before its contents.
	sort.Slice(p.entries, func(i, j int) bool {
		return strings.TrimSuffix(p.entries[i].name, "/") < strings.TrimSuffix(p.entries[j].name, "/")
	})
	return p, nil
}

// allowedMode are the mode bits a File may have.
const allowedMode = fs.ModePerm | fs.ModeDir | fs.ModeSticky | fs.ModeSetuid | fs.ModeSetgid

func fileEntry(f File) (layerEntry, error) {
	bad := func(format string, a ...any) (layerEntry, error) {
		return layerEntry{}, fmt.Errorf("%w: file %q: %s", ErrSpec, f.Path, fmt.Sprintf(format, a...))
	}
	if !strings.HasPrefix(f.Path, "/") || path.Clean(f.Path) != f.Path || f.Path == "/" {
		return bad("the path must be absolute and clean, and not /")
	}
	if f.Mode&^allowedMode != 0 {
		return bad("mode %v: only permissions, directory, sticky, setuid and setgid bits are allowed", f.Mode)
	}
	e := layerEntry{name: strings.TrimPrefix(f.Path, "/"), dir: f.Mode.IsDir(), source: f.Source, data: f.Data}
	perm := int64(f.Mode.Perm())
	switch {
	case e.dir:
		if f.Source != "" || f.Data != nil {
			return bad("a directory has no contents")
		}
		e.name += "/"
		if perm == 0 {
			perm = 0o755
		}
	case f.Source != "":
		if f.Data != nil {
			return bad("give Source or Data, not both")
		}
		fi, err := os.Stat(f.Source)
		if err != nil {
			return layerEntry{}, fmt.Errorf("file %s of the image: %w", f.Path, err)
		}
		if !fi.Mode().IsRegular() {
			return layerEntry{}, fmt.Errorf("file %s of the image: %w: %s is not a regular file", f.Path, ErrSpec, f.Source)
		}
		if perm == 0 {
			perm = int64(fi.Mode().Perm())
		}
	default:
		if perm == 0 {
			perm = 0o644
		}
	}
	if f.Mode&fs.ModeSetuid != 0 {
		perm |= 0o4000
	}
	if f.Mode&fs.ModeSetgid != 0 {
		perm |= 0o2000
	}
	if f.Mode&fs.ModeSticky != 0 {
		perm |= 0o1000
	}
	e.mode = perm
	return e, nil
}

// layerInfo are the digests and stored size of a layer.
type layerInfo struct {
	digest, diffID string
	size           int64
}

// countWriter counts the bytes written through it.
type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n += int64(n)
	return n, err
}

// writeLayer writes the layer tar of entries to out, gzip-compressed if
// compress, and returns its digests and stored size.
func writeLayer(out io.Writer, entries []layerEntry, mtime time.Time, compress bool) (layerInfo, error) {
	stored, diff := sha256.New(), sha256.New()
	cw := &countWriter{w: io.MultiWriter(out, stored)}
	var tarOut io.Writer
	var gz *gzip.Writer
	if compress {
		gz = gzip.NewWriter(cw)
		tarOut = io.MultiWriter(gz, diff)
	} else {
		tarOut = io.MultiWriter(cw, diff)
	}
	tw := tar.NewWriter(tarOut)
	for _, e := range entries {
		if err := writeLayerEntry(tw, e, mtime); err != nil {
			return layerInfo{}, err
		}
	}
	if err := tw.Close(); err != nil {
		return layerInfo{}, fmt.Errorf("write the layer: %w", err)
	}
	if gz != nil {
		if err := gz.Close(); err != nil {
			return layerInfo{}, fmt.Errorf("compress the layer: %w", err)
		}
	}
	info := layerInfo{digest: sum(stored), diffID: sum(diff), size: cw.n}
	return info, nil
}

func writeLayerEntry(tw *tar.Writer, e layerEntry, mtime time.Time) error {
	h := &tar.Header{Name: e.name, Mode: e.mode, ModTime: mtime, Typeflag: tar.TypeReg}
	if e.dir {
		h.Typeflag = tar.TypeDir
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("write the layer: %w", err)
		}
		return nil
	}
	var r io.Reader
	if e.source != "" {
		f, err := os.Open(e.source)
		if err != nil {
			return fmt.Errorf("file /%s of the image: %w", e.name, err)
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return fmt.Errorf("file /%s of the image: %w", e.name, err)
		}
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("file /%s of the image: %w: %s is not a regular file", e.name, ErrSpec, e.source)
		}
		h.Size, r = fi.Size(), f
	} else {
		h.Size, r = int64(len(e.data)), bytes.NewReader(e.data)
	}
	if err := tw.WriteHeader(h); err != nil {
		return fmt.Errorf("write the layer: %w", err)
	}
	if _, err := io.CopyN(tw, r, h.Size); err != nil {
		return fmt.Errorf("copy %s into /%s of the image (did it change while the image was built?): %w", e.source, e.name, err)
	}
	return nil
}

// archive writes the outer tar with fixed metadata.
type archive struct {
	tw    *tar.Writer
	mtime time.Time
}

// entry is one entry of the outer archive.
type entry struct {
	name string
	dir  bool
	size int64
	open func() (io.Reader, error)
}

func bytesEntry(name string, b []byte) entry {
	return entry{name: name, size: int64(len(b)), open: func() (io.Reader, error) { return bytes.NewReader(b), nil }}
}

func (a *archive) add(e entry) error {
	h := &tar.Header{Name: e.name, Mode: 0o644, ModTime: a.mtime, Typeflag: tar.TypeReg, Size: e.size}
	if e.dir {
		h.Mode, h.Typeflag, h.Size = 0o755, tar.TypeDir, 0
	}
	if err := a.tw.WriteHeader(h); err != nil {
		return fmt.Errorf("write the archive: %w", err)
	}
	if e.dir {
		return nil
	}
	r, err := e.open()
	if err != nil {
		return fmt.Errorf("write %s of the archive: %w", e.name, err)
	}
	if _, err := io.CopyN(a.tw, r, e.size); err != nil {
		return fmt.Errorf("write %s of the archive: %w", e.name, err)
	}
	return nil
}

func sum(h hash.Hash) string { return "sha256:" + hex.EncodeToString(h.Sum(nil)) }

func digestOf(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

func hexOf(digest string) string { return strings.TrimPrefix(digest, "sha256:") }
