package bench

import "slices"

// etcdRow returns the etcd row of case cas among rows; nil if none.
func etcdRow(rows []Row, cas string) *Row {
	i := slices.IndexFunc(rows, func(x Row) bool { return x.Datastore == "" && x.Case == cas })
	if i < 0 {
		return nil
	}
	return &rows[i]
}

// kubeGoals are the goals of a Kubernetes row: those of its etcd row that
// bound the figure itself (latencies, not ratios to an etcd baseline).
func kubeGoals(etcd *Row) []Goal {
	if etcd == nil {
		return nil
	}
	var out []Goal
	for _, g := range etcd.Goals {
		if g.Stat != StatRatio {
			out = append(out, g)
		}
	}
	return out
}

// kubeFailRows gives one error row per etcd row of fig (one row when there
// are none).
func kubeFailRows(etcdRows []Row, fig string, err error) []Row {
	var out []Row
	for _, e := range etcdRows {
		if e.Datastore == "" {
			out = append(out, kubeErrorRow(fig, e.Case, e.Unit, err, kubeGoals(&e)...))
		}
	}
	if len(out) == 0 {
		out = append(out, kubeErrorRow(fig, "", "", err))
	}
	return out
}
