//go:build !unix

package idem

import "io/fs"

// allocated returns the bytes a file occupies on disk.
func allocated(info fs.FileInfo) int64 { return info.Size() }
