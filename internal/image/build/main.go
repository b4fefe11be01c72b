// Command build compiles Coil's binaries and writes the runtime image and the
// sandbox ("pause") image as tarballs, without a Docker engine; `make image`
// runs it. See package image.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/coil-project/coil/internal/image"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func main() {
	ref := flag.String("image", image.DefaultImage, "name and tag of the runtime image")
	out := flag.String("out", "bin/coil-image.tar", "the runtime image's tarball")
	pauseRef := flag.String("pause-image", image.DefaultPauseImage, "name and tag of the sandbox image")
	pauseOut := flag.String("pause-out", "bin/pause-image.tar", "the sandbox image's tarball (empty: not built)")
	arch := flag.String("arch", runtime.GOARCH, "GOARCH of the images (linux only)")
	flag.Parse()
	if err := run(context.Background(), *ref, *out, *pauseRef, *pauseOut, *arch); err != nil {
		fmt.Fprintln(os.Stderr, "build:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, ref, out, pauseRef, pauseOut, arch string) error {
	root, err := os.Getwd()
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "coil-image-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	c := image.Compiler{Go: os.Getenv("GO"), Root: root, Arch: arch}
	if err := c.Coil(ctx, work); err != nil {
		return err
	}
	img, err := image.Coil(work, arch)
	if err != nil {
		return err
	}
	if err := write(out, ref, img); err != nil {
		return err
	}
	if pauseOut == "" {
		return nil
	}
	if err := c.Pause(ctx, work); err != nil {
		return err
	}
	if img, err = image.Pause(work, arch); err != nil {
		return err
	}
	return write(pauseOut, pauseRef, img)
}

// write writes img and says what it wrote.
func write(file, ref string, img v1.Image) error {
	if err := image.Write(file, ref, img); err != nil {
		return err
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	st, err := os.Stat(file)
	if err != nil {
		return err
	}
	fmt.Printf("%s: %s %s (%.1f MB)\n", filepath.ToSlash(file), ref, digest, float64(st.Size())/1e6)
	return nil
}
