package etcd

// SetListPageSize sets how many keys one List request reads and returns a
// function that restores the previous size.
func SetListPageSize(n int64) (restore func()) {
	old := listPageSize
	listPageSize = n
	return func() { listPageSize = old }
}
