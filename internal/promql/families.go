package promql

import (
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Families are the metrics a scrape showed: each family's type and the
// label names of its series.
type Families map[string]Family

// Family is one metric family of a scrape.
type Family struct {
	Type   dto.MetricType
	Labels map[string]bool
}

// Read adds the families of a scrape in the Prometheus text format. A
// family without series is not in a scrape, so scrape after the state
// the queries look at exists.
func (f Families) Read(r io.Reader) error {
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(r)
	if err != nil {
		return fmt.Errorf("parse scrape: %w", err)
	}
	for name, mf := range mfs {
		fam, ok := f[name]
		if !ok {
			fam = Family{Type: mf.GetType(), Labels: map[string]bool{}}
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				fam.Labels[lp.GetName()] = true
			}
		}
		f[name] = fam
	}
	return nil
}

// targetLabels are the labels Prometheus gives every series it scrapes,
// which the exposition itself does not carry.
var targetLabels = []string{"instance", "job"}

// lookup finds the family of a selector's metric: histogram and summary
// series are named after their family with _bucket, _sum or _count, and
// _bucket series carry the label le.
func (f Families) lookup(metric string) (Family, map[string]bool, bool) {
	if fam, ok := f[metric]; ok {
		labels := map[string]bool{}
		for l := range fam.Labels {
			labels[l] = true
		}
		for _, l := range targetLabels {
			labels[l] = true
		}
		return fam, labels, true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(metric, suffix)
		if !ok {
			continue
		}
		fam, ok := f[base]
		if !ok || fam.Type != dto.MetricType_HISTOGRAM && fam.Type != dto.MetricType_SUMMARY {
			continue
		}
		labels := map[string]bool{}
		for l := range fam.Labels {
			labels[l] = true
		}
		for _, l := range targetLabels {
			labels[l] = true
		}
		if suffix == "_bucket" && fam.Type == dto.MetricType_HISTOGRAM {
			labels["le"] = true
		}
		return fam, labels, true
	}
	return Family{}, nil, false
}

// Check reports every metric q selects that f lacks, every matcher label
// its metric's series lack, and every grouping label none of q's metrics
// carries. The target labels instance and job count as carried.
func (f Families) Check(q Query) error {
	var errs []error
	seen := map[string]bool{}
	for _, s := range q.Selectors {
		_, labels, ok := f.lookup(s.Metric)
		if !ok {
			errs = append(errs, fmt.Errorf("metric %s is not exported", s.Metric))
			continue
		}
		for _, l := range s.Labels {
			if !labels[l] && l != "__name__" {
				errs = append(errs, fmt.Errorf("metric %s has no label %s (it has %s)", s.Metric, l, names(labels)))
			}
		}
		for l := range labels {
			seen[l] = true
		}
	}
	for _, l := range q.Grouping {
		if !seen[l] {
			errs = append(errs, fmt.Errorf("no metric of the query has the label %s it groups or matches by", l))
		}
	}
	return errors.Join(errs...)
}

func names(set map[string]bool) string {
	var s []string
	for n := range set {
		s = append(s, n)
	}
	sort.Strings(s)
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}
