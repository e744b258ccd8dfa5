package metrics

import (
	"fmt"
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cacheaside/cacheaside"
)

// values reads every series of the table from m, in order; a series that
// is not exported (a negative value) reads as "absent".
func values(m cacheaside.ServiceMetrics) []string {
	var vs []string
	for _, f := range families {
		for _, s := range f.series {
			if v := s.get(&m); v < 0 {
				vs = append(vs, "absent")
			} else {
				vs = append(vs, fmt.Sprint(v))
			}
		}
	}
	return vs
}

// TestTable_EveryFieldExported: every field of cacheaside.ServiceMetrics
// moves some exported series, unless notExported says why not. When a
// field is added to the snapshot, this test fails until it has a row in
// the table (or a reason in notExported).
func TestTable_EveryFieldExported(t *testing.T) {
	base := cacheaside.ServiceMetrics{RepositoryBreakerState: "closed", CacheSize: -1}
	before := values(base)
	typ := reflect.TypeFor[cacheaside.ServiceMetrics]()
	for i := range typ.NumField() {
		f := typ.Field(i)
		if !f.IsExported() {
			continue
		}
		m := base
		v := reflect.ValueOf(&m).Elem().Field(i)
		switch {
		case f.Type == reflect.TypeFor[time.Duration]():
			v.SetInt(int64(7 * time.Second))
		case v.Kind() == reflect.Int64:
			v.SetInt(7)
		case v.Kind() == reflect.Float64:
			v.SetFloat(0.7)
		case v.Kind() == reflect.String && f.Name == "RepositoryBreakerState":
			v.SetString("open")
		case v.Kind() == reflect.String:
			v.SetString("serving")
		default:
			t.Errorf("ServiceMetrics.%s is a %s, which this test cannot set: teach it", f.Name, f.Type)
			continue
		}
		moved := fmt.Sprint(values(m)) != fmt.Sprint(before)
		why, skipped := notExported[f.Name]
		switch {
		case !moved && !skipped:
			t.Errorf("ServiceMetrics.%s is not exported: add a row to the table in table.go (or say why not in notExported)", f.Name)
		case moved && skipped:
			t.Errorf("ServiceMetrics.%s is exported, but notExported says %q", f.Name, why)
		}
	}
	for name := range notExported {
		if _, ok := typ.FieldByName(name); !ok {
			t.Errorf("notExported lists %s, which ServiceMetrics does not have", name)
		}
	}
}

var (
	promNameRE = regexp.MustCompile(`^cacheaside_[a-z][a-z0-9_]*[a-z]$`)
	otelNameRE = regexp.MustCompile(`^cacheaside(\.[a-z][a-z0-9_]*)+$`)
	labelRE    = regexp.MustCompile(`^[a-z][a-z_]*$`)
	// An OpenTelemetry unit here is seconds, a dimensionless 1, or an
	// annotation such as {read}.
	unitRE = regexp.MustCompile(`^(s|1|\{[a-z]+\})$`)
)

// TestTable_Names: the derived names follow each system's conventions and
// are unique, and every family has help and at most a few series.
func TestTable_Names(t *testing.T) {
	prom, otel := make(map[string]bool), make(map[string]bool)
	for _, f := range families {
		p, o := promName(f), otelName(f)
		if !promNameRE.MatchString(p) || strings.Contains(p, "__") {
			t.Errorf("Prometheus name %q is not snake_case under cacheaside_", p)
		}
		if !otelNameRE.MatchString(o) {
			t.Errorf("OpenTelemetry name %q is not dot-separated under cacheaside.", o)
		}
		if strings.HasSuffix(o, "_total") || strings.HasSuffix(o, ".total") || strings.HasSuffix(o, "seconds") {
			t.Errorf("OpenTelemetry name %q has a suffix the unit or the kind should have been", o)
		}
		if (f.kind == counter) != strings.HasSuffix(p, "_total") {
			t.Errorf("%s: _total suffix and kind disagree", p)
		}
		if !unitRE.MatchString(f.unit) {
			t.Errorf("%s: unit %q is not s, 1 or a {annotation}", p, f.unit)
		}
		if prom[p] || otel[o] {
			t.Errorf("%s / %s: two families have the name", p, o)
		}
		prom[p], otel[o] = true, true
		if f.label != "" && !labelRE.MatchString(f.label) {
			t.Errorf("%s: label %q is not snake_case", p, f.label)
		}
		if f.label == "service" {
			t.Errorf("%s: the label service is WithService's", p)
		}
		if !strings.HasSuffix(f.help, ".") || len(f.help) < 20 {
			t.Errorf("%s: help %q is not a sentence", p, f.help)
		}
		if len(f.series) > 8 {
			t.Errorf("%s: %d series; the label values are meant to be a small fixed set", p, len(f.series))
		}
	}
	for _, c := range []struct{ label, want string }{
		{"op", "cacheaside.operation"}, {"result", "cacheaside.result"}, {"service", "cacheaside.service"},
	} {
		if got := otelKey(c.label); got != c.want {
			t.Errorf("otelKey(%q) = %q, want %q", c.label, got, c.want)
		}
	}
}

// TestGroup_RejectsBadTables: group panics on a table that breaks one of
// its rules, naming the row.
func TestGroup_RejectsBadTables(t *testing.T) {
	get := func(*snap) float64 { return 0 }
	for _, c := range []struct {
		want string
		rows []row
	}{
		{"cacheaside/metrics: table row 1 (a): kind, unit or label differ from the family's first row",
			[]row{{"a", counter, "{x}", "l", "1", get, "A."}, {"a", gauge, "{x}", "l", "2", get, ""}}},
		{"cacheaside/metrics: table row 1 (a): a family of more than one row needs a label",
			[]row{{"a", counter, "{x}", "", "", get, "A."}, {"a", counter, "{x}", "", "", get, ""}}},
		{"cacheaside/metrics: table row 1 (a): only a family's first row has help",
			[]row{{"a", counter, "{x}", "l", "1", get, "A."}, {"a", counter, "{x}", "l", "2", get, "A again."}}},
		{`cacheaside/metrics: table row 1 (a): l="1" twice`,
			[]row{{"a", counter, "{x}", "l", "1", get, "A."}, {"a", counter, "{x}", "l", "1", get, ""}}},
		{"cacheaside/metrics: table row 2 (a): the rows of a family must be next to each other",
			[]row{{"a", counter, "{x}", "", "", get, "A."}, {"b", counter, "{x}", "", "", get, "B."}, {"a", counter, "{x}", "", "", get, "A."}}},
		{"cacheaside/metrics: table row 0 (a): a family's first row needs help",
			[]row{{"a", counter, "{x}", "", "", get, ""}}},
		{"cacheaside/metrics: table row 0 (a): a label needs a value and a value a label",
			[]row{{"a", counter, "{x}", "l", "", get, "A."}}},
	} {
		wantPanic(t, c.want, func() { group(c.rows) })
	}
	if fs := group(table); len(fs) != len(families) {
		t.Errorf("group(table) has %d families, families %d", len(fs), len(families))
	}
}

// TestDocs_ListEveryMetric: the package documentation and the README name
// every exported metric under both its names, and every field left out.
func TestDocs_ListEveryMetric(t *testing.T) {
	for _, file := range []string{"doc.go", "README.md"} {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		doc := string(b)
		var names []string
		for _, f := range families {
			names = append(names, promName(f), otelName(f))
		}
		for name := range notExported {
			names = append(names, name)
		}
		for _, n := range names {
			// The name, not a longer one it starts: cacheaside.reads is not cacheaside.reads.x.
			if !regexp.MustCompile(regexp.QuoteMeta(n) + `([^a-zA-Z0-9_.]|\.[^a-zA-Z0-9_]|$)`).MatchString(doc) {
				t.Errorf("%s does not list %s", file, n)
			}
		}
	}
}
