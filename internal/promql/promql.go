// Package promql finds what a PromQL expression reads: the metric names of
// its series selectors, the labels its matchers name, and the labels it
// groups or matches by. It checks the example alert rules and dashboard in
// docs/examples against the metrics Coil's binaries export, so that a
// renamed metric or label fails a test instead of an operator's alert.
//
// It is a lexer, not a parser: it does not evaluate nor type-check, and
// accepts some expressions Prometheus would refuse. What it reports of a
// valid expression is exact.
package promql

import (
	"fmt"
	"strings"
)

// Selector is a series selector: metric{label="value", ...}.
type Selector struct {
	Metric string
	// Labels are the label names of its matchers.
	Labels []string
}

// Query is what an expression reads.
type Query struct {
	Selectors []Selector
	// Grouping are the labels of by, without, on, ignoring, group_left
	// and group_right clauses.
	Grouping []string
}

// keywords are identifiers that are neither metrics nor functions.
var keywords = map[string]bool{
	"and": true, "or": true, "unless": true, "bool": true, "offset": true, "atan2": true,
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
	"inf": true, "nan": true,
}

// aggregators may be followed by a by or without clause before their
// parenthesis: "sum by (pool) (x)".
var aggregators = map[string]bool{
	"sum": true, "min": true, "max": true, "avg": true, "group": true, "stddev": true, "stdvar": true,
	"count": true, "count_values": true, "bottomk": true, "topk": true, "quantile": true,
	"limitk": true, "limit_ratio": true,
}

// groupers are the keywords followed by a list of label names.
var groupers = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
}

// Parse lexes expr and returns what it reads.
func Parse(expr string) (Query, error) {
	l := lexer{s: expr}
	var q Query
	for {
		l.skipSpace()
		if l.done() {
			return q, nil
		}
		c := l.s[l.i]
		switch {
		case c == '"' || c == '\'' || c == '`':
			if err := l.skipString(); err != nil {
				return Query{}, err
			}
		case c == '[':
			// A range or subquery: durations and Grafana's $__interval.
			end := strings.IndexByte(l.s[l.i:], ']')
			if end < 0 {
				return Query{}, fmt.Errorf("unclosed [ at %d in %q", l.i, expr)
			}
			l.i += end + 1
		case c == '{':
			return Query{}, fmt.Errorf("selector without a metric name at %d in %q", l.i, expr)
		case c == '#':
			// A comment runs to the end of the line.
			if end := strings.IndexByte(l.s[l.i:], '\n'); end >= 0 {
				l.i += end
			} else {
				l.i = len(l.s)
			}
		case isDigit(c) || c == '.' && l.i+1 < len(l.s) && isDigit(l.s[l.i+1]):
			for !l.done() && (isIdent(l.s[l.i]) || l.s[l.i] == '.') {
				l.i++
			}
		case isIdentStart(c):
			id := l.ident()
			l.skipSpace()
			next := byte(0)
			if !l.done() {
				next = l.s[l.i]
			}
			switch {
			case groupers[id] && next == '(':
				labels, err := l.labelList()
				if err != nil {
					return Query{}, err
				}
				q.Grouping = append(q.Grouping, labels...)
			case keywords[strings.ToLower(id)]:
				if id == "offset" {
					l.skipSpace()
					for !l.done() && (isIdent(l.s[l.i]) || l.s[l.i] == '-') {
						l.i++
					}
				}
			case next == '(' || aggregators[id]:
				// A function or aggregation; its arguments follow.
			case next == '{':
				labels, err := l.matchers()
				if err != nil {
					return Query{}, err
				}
				q.Selectors = append(q.Selectors, Selector{Metric: id, Labels: labels})
			default:
				q.Selectors = append(q.Selectors, Selector{Metric: id})
			}
		default:
			l.i++ // an operator, comma or parenthesis
		}
	}
}

type lexer struct {
	s string
	i int
}

func (l *lexer) done() bool { return l.i >= len(l.s) }

func (l *lexer) skipSpace() {
	for !l.done() && strings.IndexByte(" \t\r\n", l.s[l.i]) >= 0 {
		l.i++
	}
}

func (l *lexer) ident() string {
	start := l.i
	for !l.done() && isIdent(l.s[l.i]) {
		l.i++
	}
	return l.s[start:l.i]
}

func (l *lexer) skipString() error {
	q := l.s[l.i]
	for j := l.i + 1; j < len(l.s); j++ {
		switch {
		case l.s[j] == '\\' && q != '`':
			j++
		case l.s[j] == q:
			l.i = j + 1
			return nil
		}
	}
	return fmt.Errorf("unclosed string at %d in %q", l.i, l.s)
}

// labelList reads "(a, b)" after a grouping keyword.
func (l *lexer) labelList() ([]string, error) {
	l.i++ // (
	var labels []string
	for {
		l.skipSpace()
		switch {
		case l.done():
			return nil, fmt.Errorf("unclosed label list in %q", l.s)
		case l.s[l.i] == ')':
			l.i++
			return labels, nil
		case l.s[l.i] == ',':
			l.i++
		case isIdentStart(l.s[l.i]):
			labels = append(labels, l.ident())
		default:
			return nil, fmt.Errorf("unexpected %q in a label list at %d in %q", l.s[l.i], l.i, l.s)
		}
	}
}

// matchers reads `{a="x", b=~"y"}` and returns the label names.
func (l *lexer) matchers() ([]string, error) {
	l.i++ // {
	var labels []string
	for {
		l.skipSpace()
		switch {
		case l.done():
			return nil, fmt.Errorf("unclosed { in %q", l.s)
		case l.s[l.i] == '}':
			l.i++
			return labels, nil
		case l.s[l.i] == ',':
			l.i++
		case isIdentStart(l.s[l.i]):
			labels = append(labels, l.ident())
			l.skipSpace()
			for !l.done() && strings.IndexByte("=!~", l.s[l.i]) >= 0 {
				l.i++
			}
			l.skipSpace()
			if l.done() || strings.IndexByte("\"'`", l.s[l.i]) < 0 {
				return nil, fmt.Errorf("matcher of %s without a quoted value in %q", labels[len(labels)-1], l.s)
			}
			if err := l.skipString(); err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("unexpected %q in a selector at %d in %q", l.s[l.i], l.i, l.s)
		}
	}
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
func isIdentStart(c byte) bool {
	return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}
func isIdent(c byte) bool { return isIdentStart(c) || isDigit(c) }
