package promql

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"

	"sigs.k8s.io/yaml"
)

// The example files in docs/examples that hold PromQL.
const (
	RulesFile     = "prometheus-rules.yaml"
	DashboardFile = "grafana-dashboard.json"
)

// Example is one query of the example files, parsed.
type Example struct {
	// Where names it: the file and the rule or panel.
	Where string
	Expr  string
	Query Query
}

// ReadExamples parses every query of the alerting rules and the Grafana
// dashboard in dir (docs/examples).
func ReadExamples(dir string) ([]Example, error) {
	var out []Example
	add := func(where, expr string) error {
		q, err := Parse(expr)
		if err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		out = append(out, Example{Where: where, Expr: expr, Query: q})
		return nil
	}

	data, err := os.ReadFile(filepath.Join(dir, RulesFile))
	if err != nil {
		return nil, err
	}
	var rules struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Alert  string `json:"alert"`
				Record string `json:"record"`
				Expr   string `json:"expr"`
			} `json:"rules"`
		} `json:"groups"`
	}
	if err := yaml.Unmarshal(data, &rules); err != nil {
		return nil, fmt.Errorf("%s: %w", RulesFile, err)
	}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Expr == "" {
				return nil, fmt.Errorf("%s: rule %s%s of group %s has no expr", RulesFile, r.Alert, r.Record, g.Name)
			}
			if err := add(fmt.Sprintf("%s: %s%s", RulesFile, r.Alert, r.Record), r.Expr); err != nil {
				return nil, err
			}
		}
	}

	data, err = os.ReadFile(filepath.Join(dir, DashboardFile))
	if err != nil {
		return nil, err
	}
	var dash dashboard
	if err := json.Unmarshal(data, &dash); err != nil {
		return nil, fmt.Errorf("%s: %w", DashboardFile, err)
	}
	var walk func(panels []panel) error
	walk = func(panels []panel) error {
		for _, p := range panels {
			for _, t := range p.Targets {
				if t.Expr == "" {
					return fmt.Errorf("%s: panel %q target %s has no expr", DashboardFile, p.Title, t.RefID)
				}
				if err := add(fmt.Sprintf("%s: panel %q target %s", DashboardFile, p.Title, t.RefID), t.Expr); err != nil {
					return err
				}
			}
			if err := walk(p.Panels); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk(dash.Panels); err != nil {
		return nil, err
	}
	for _, v := range dash.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q string
		if err := json.Unmarshal(v.Query, &q); err != nil {
			var obj struct {
				Query string `json:"query"`
			}
			if err := json.Unmarshal(v.Query, &obj); err != nil {
				return nil, fmt.Errorf("%s: variable %s: query is neither a string nor an object", DashboardFile, v.Name)
			}
			q = obj.Query
		}
		m := labelValues.FindStringSubmatch(q)
		if m == nil {
			return nil, fmt.Errorf("%s: variable %s: only label_values(metric, label) is checked, got %q", DashboardFile, v.Name, q)
		}
		out = append(out, Example{Where: fmt.Sprintf("%s: variable %s", DashboardFile, v.Name), Expr: q,
			Query: Query{Selectors: []Selector{{Metric: m[1], Labels: []string{m[2]}}}}})
	}
	return out, nil
}

var labelValues = regexp.MustCompile(`^\s*label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*$`)

type dashboard struct {
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name  string          `json:"name"`
			Type  string          `json:"type"`
			Query json.RawMessage `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	Title   string  `json:"title"`
	Panels  []panel `json:"panels"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
}
