package installer

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// tempPrefix starts the name of every temporary file the installer makes.
// The leading dot keeps it out of `ls` and, together with the ".tmp"
// suffix, out of the extensions a container runtime reads as CNI
// configuration (.conf, .conflist, .json), so a half-written file is never
// taken for a network configuration.
const tempPrefix = ".coil-installer-"

// writeFileAtomic replaces dir/name with data and mode such that a reader
// sees either the old file or the complete new one, never a partial one:
// the data goes into a temporary file in the same directory, is synced to
// disk, and is renamed over the target; the directory is synced too, so
// the rename survives a crash. A running executable being replaced keeps
// running from the old inode ("text file busy" cannot happen).
func writeFileAtomic(dir, name string, data []byte, mode fs.FileMode) (err error) {
	f, err := os.CreateTemp(dir, tempPrefix+name+"-*.tmp")
	if err != nil {
		return fmt.Errorf("create temporary file for %s in %s: %w", name, dir, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err = f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	// CreateTemp makes the file 0600; Chmod is not subject to the umask.
	if err = f.Chmod(mode); err != nil {
		return fmt.Errorf("chmod %s: %w", tmp, err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", tmp, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp, err)
	}
	target := filepath.Join(dir, name)
	if err = os.Rename(tmp, target); err != nil {
		return fmt.Errorf("rename %s to %s: %w", tmp, target, err)
	}
	return syncDir(dir)
}

// syncDir makes the entries of dir (a rename into it) durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

// sameContent reports whether path is a regular file holding exactly data
// with permission bits mode. A missing file is not an error.
func sameContent(path string, data []byte, mode fs.FileMode) (bool, error) {
	st, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("stat %s: %w", path, err)
	}
	if !st.Mode().IsRegular() || st.Mode().Perm() != mode || st.Size() != int64(len(data)) {
		return false, nil
	}
	old, err := os.ReadFile(path)
	if err != nil {
		return false, fmt.Errorf("read %s: %w", path, err)
	}
	return bytes.Equal(old, data), nil
}

// removeTempFiles deletes temporary files an earlier, interrupted run left
// in dir. It returns the names removed.
func removeTempFiles(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read directory %s: %w", dir, err)
	}
	var removed []string
	for _, e := range entries {
		n := e.Name()
		if e.IsDir() || !strings.HasPrefix(n, tempPrefix) || !strings.HasSuffix(n, ".tmp") {
			continue
		}
		if err := os.Remove(filepath.Join(dir, n)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return removed, fmt.Errorf("remove leftover %s: %w", filepath.Join(dir, n), err)
		}
		removed = append(removed, n)
	}
	return removed, nil
}
