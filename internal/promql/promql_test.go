package promql

import (
	"reflect"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		expr     string
		want     []Selector
		grouping []string
		err      string
	}{
		{expr: `up`, want: []Selector{{Metric: "up"}}},
		{expr: `coil_controller_pool_usage_ratio > 0.85`, want: []Selector{{Metric: "coil_controller_pool_usage_ratio"}}},
		{expr: `max by (pool) (coil_controller_pool_usage_ratio) > 0.85 unless on (pool) coil_controller_pool_drained == 1`,
			want:     []Selector{{Metric: "coil_controller_pool_usage_ratio"}, {Metric: "coil_controller_pool_drained"}},
			grouping: []string{"pool", "pool"}},
		{expr: `sum(rate(coild_request_failures_total{reason!~"a|b", job="x"}[5m])) without(instance)`,
			want:     []Selector{{Metric: "coild_request_failures_total", Labels: []string{"reason", "job"}}},
			grouping: []string{"instance"}},
		{expr: `histogram_quantile(0.99, sum by (le) (rate(coild_allocation_duration_seconds_bucket[$__rate_interval])))`,
			want:     []Selector{{Metric: "coild_allocation_duration_seconds_bucket"}},
			grouping: []string{"le"}},
		{expr: `time() - coil_controller_last_successful_sweep_timestamp_seconds offset 5m > 1e3`,
			want: []Selector{{Metric: "coil_controller_last_successful_sweep_timestamp_seconds"}}},
		{expr: `x{a="}{\"", b='q'} # a comment with metric_name{`, want: []Selector{{Metric: "x", Labels: []string{"a", "b"}}}},
		{expr: `sum(x) by (pool) / ignoring(node) group_left(subnet) y`,
			want: []Selector{{Metric: "x"}, {Metric: "y"}}, grouping: []string{"pool", "node", "subnet"}},
		{expr: `{job="x"}`, err: "without a metric name"},
		{expr: `x{a=b}`, err: "quoted value"},
		{expr: `x{a="b"`, err: "unclosed"},
		{expr: `x[5m`, err: "unclosed ["},
	}
	for _, tc := range tests {
		q, err := Parse(tc.expr)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("Parse(%q) = %v, want an error about %s", tc.expr, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("Parse(%q): %v", tc.expr, err)
			continue
		}
		if !reflect.DeepEqual(q.Selectors, tc.want) || !reflect.DeepEqual(q.Grouping, tc.grouping) {
			t.Errorf("Parse(%q) = %+v, want selectors %+v, grouping %v", tc.expr, q, tc.want, tc.grouping)
		}
	}
}

const scrape = `# HELP coil_controller_pool_usage_ratio r
# TYPE coil_controller_pool_usage_ratio gauge
coil_controller_pool_usage_ratio{pool="default"} 0.5
# HELP coild_allocation_duration_seconds d
# TYPE coild_allocation_duration_seconds histogram
coild_allocation_duration_seconds_bucket{le="0.1"} 1
coild_allocation_duration_seconds_bucket{le="+Inf"} 1
coild_allocation_duration_seconds_sum 0.01
coild_allocation_duration_seconds_count 1
`

func TestCheck(t *testing.T) {
	f := Families{}
	if err := f.Read(strings.NewReader(scrape)); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		expr string
		errs []string
	}{
		{expr: `max by (pool) (coil_controller_pool_usage_ratio{pool="a"}) > 0.85`},
		{expr: `histogram_quantile(0.9, sum by (le) (rate(coild_allocation_duration_seconds_bucket[5m])))`},
		{expr: `rate(coild_allocation_duration_seconds_count[5m])`},
		{expr: `coil_pool_usage_ratio`, errs: []string{"metric coil_pool_usage_ratio is not exported"}},
		{expr: `coil_controller_pool_usage_ratio{subnet="x"}`, errs: []string{"has no label subnet (it has instance, job, pool)"}},
		{expr: `sum by (instance) (coil_controller_pool_usage_ratio{job="coil"})`},
		{expr: `sum by (node) (coil_controller_pool_usage_ratio)`, errs: []string{"label node it groups"}},
		{expr: `coild_allocation_duration_seconds_count{le="1"}`, errs: []string{"has no label le"}},
	}
	for _, tc := range tests {
		q, err := Parse(tc.expr)
		if err != nil {
			t.Fatal(err)
		}
		err = f.Check(q)
		if len(tc.errs) == 0 && err != nil {
			t.Errorf("Check(%q) = %v", tc.expr, err)
		}
		for _, want := range tc.errs {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("Check(%q) = %v, want an error about %q", tc.expr, err, want)
			}
		}
	}
}

// TestExamplesParse checks the syntax of the shipped examples; mtest
// (TestPoolOperations) checks them against the binaries' metrics.
func TestExamplesParse(t *testing.T) {
	ex, err := ReadExamples("../../docs/examples")
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]int{}
	for _, e := range ex {
		if len(e.Query.Selectors) == 0 {
			t.Errorf("%s selects no metric: %s", e.Where, e.Expr)
		}
		files[strings.SplitN(e.Where, ":", 2)[0]]++
	}
	if files[RulesFile] < 4 || files[DashboardFile] < 8 {
		t.Errorf("queries per file: %v", files)
	}
}
