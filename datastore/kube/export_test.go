package kube

// SetPageSize sets the ListPages page size until the returned function
// restores it.
func SetPageSize(n int64) (restore func()) {
	old := pageSize
	pageSize = n
	return func() { pageSize = old }
}
