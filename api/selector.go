package api

import (
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"
)

// Selector is a parsed nodeSelector: a predicate over a node's labels.
type Selector interface {
	// Matches reports whether a node with these labels is selected.
	Matches(labels map[string]string) bool
	// String returns the canonical form of the selector; it parses back to
	// an equivalent selector.
	String() string
}

// maxSelectorDepth bounds the nesting of parentheses and negations, so that
// hostile input cannot exhaust the stack.
const maxSelectorDepth = 64

// SelectorError reports where a selector fails to parse and what the parser
// expected there.
type SelectorError struct {
	// Selector is the text that was parsed.
	Selector string
	// Pos is the byte offset of the problem, counted from 0.
	Pos int
	// Expected says what would have been valid at Pos.
	Expected string
	// Found describes what is at Pos instead.
	Found string
}

// Error implements error.
func (e *SelectorError) Error() string {
	return fmt.Sprintf("invalid selector %q: at position %d: expected %s, found %s",
		e.Selector, e.Pos, e.Expected, e.Found)
}

// ParseSelector parses a Calico-style label selector such as
//
//	has(zone) && zone in {'a', 'b'} || !(role == "edge")
//
// The language has all(), has(k), k == 'v', k != 'v', k in {'a', 'b'},
// k not in {...}, k contains 's', k starts with 's', k ends with 's', !x,
// x && y, x || y and parentheses; ! binds tighter than &&, which binds tighter
// than ||. Strings are in single or double quotes, without escapes. Label keys
// are made of letters, digits and . - _ /. As in Calico, != and not in also
// match nodes that lack the label. The empty selector selects every node.
func ParseSelector(s string) (Selector, error) {
	p := &selParser{src: s}
	p.skipSpace()
	if p.pos == len(s) {
		return selAll{}, nil
	}
	sel, err := p.parseOr(0)
	if err != nil {
		return nil, err
	}
	p.skipSpace()
	if p.pos != len(s) {
		return nil, p.errorf("&&, || or the end of the selector")
	}
	return sel, nil
}

type selParser struct {
	src string
	pos int
}

func (p *selParser) errorf(expected string) error {
	return &SelectorError{Selector: p.src, Pos: p.pos, Expected: expected, Found: p.found()}
}

// found describes the text at the current position for error messages.
func (p *selParser) found() string {
	if p.pos >= len(p.src) {
		return "the end of the selector"
	}
	rest := p.src[p.pos:]
	if n := keyLen(rest); n > 0 {
		return fmt.Sprintf("%q", rest[:n])
	}
	r, _ := utf8.DecodeRuneInString(rest)
	return fmt.Sprintf("%q", string(r))
}

func (p *selParser) skipSpace() {
	for p.pos < len(p.src) {
		switch p.src[p.pos] {
		case ' ', '\t', '\n', '\r':
			p.pos++
		default:
			return
		}
	}
}

// peek reports whether the input continues with tok after spaces, without
// consuming anything.
func (p *selParser) peek(tok string) bool {
	save := p.pos
	p.skipSpace()
	ok := strings.HasPrefix(p.src[p.pos:], tok)
	p.pos = save
	return ok
}

// accept consumes tok (after spaces) when the input continues with it.
func (p *selParser) accept(tok string) bool {
	p.skipSpace()
	if strings.HasPrefix(p.src[p.pos:], tok) {
		p.pos += len(tok)
		return true
	}
	return false
}

func (p *selParser) expect(tok, expected string) error {
	if !p.accept(tok) {
		return p.errorf(expected)
	}
	return nil
}

func isKeyByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		c == '.' || c == '-' || c == '_' || c == '/'
}

func keyLen(s string) int {
	n := 0
	for n < len(s) && isKeyByte(s[n]) {
		n++
	}
	return n
}

// word consumes a run of label-key characters after spaces; "" when none.
func (p *selParser) word() string {
	p.skipSpace()
	n := keyLen(p.src[p.pos:])
	w := p.src[p.pos : p.pos+n]
	p.pos += n
	return w
}

func (p *selParser) parseOr(depth int) (Selector, error) {
	first, err := p.parseAnd(depth)
	if err != nil {
		return nil, err
	}
	terms := []Selector{first}
	for p.accept("||") {
		t, err := p.parseAnd(depth)
		if err != nil {
			return nil, err
		}
		terms = append(terms, t)
	}
	if len(terms) == 1 {
		return first, nil
	}
	return newOr(terms), nil
}

func (p *selParser) parseAnd(depth int) (Selector, error) {
	first, err := p.parseUnary(depth)
	if err != nil {
		return nil, err
	}
	terms := []Selector{first}
	for p.accept("&&") {
		t, err := p.parseUnary(depth)
		if err != nil {
			return nil, err
		}
		terms = append(terms, t)
	}
	if len(terms) == 1 {
		return first, nil
	}
	return newAnd(terms), nil
}

func (p *selParser) parseUnary(depth int) (Selector, error) {
	if depth >= maxSelectorDepth {
		p.skipSpace()
		return nil, p.errorf(fmt.Sprintf("at most %d nested parentheses and negations", maxSelectorDepth))
	}
	p.skipSpace()
	// "!" starts a negation unless it is the "!=" of a comparison, which
	// cannot appear here anyway; reject "!=" explicitly for a clear message.
	if strings.HasPrefix(p.src[p.pos:], "!") && !strings.HasPrefix(p.src[p.pos:], "!=") {
		p.pos++
		x, err := p.parseUnary(depth + 1)
		if err != nil {
			return nil, err
		}
		return selNot{x}, nil
	}
	if p.accept("(") {
		x, err := p.parseOr(depth + 1)
		if err != nil {
			return nil, err
		}
		if err := p.expect(")", "')', && or ||"); err != nil {
			return nil, err
		}
		return x, nil
	}
	return p.parseTerm()
}

const termExpected = "a label key, has(key), all(), '!' or '('"

func (p *selParser) parseTerm() (Selector, error) {
	key := p.word()
	if key == "" {
		return nil, p.errorf(termExpected)
	}
	switch {
	case key == "all" && p.peek("("):
		p.accept("(")
		if err := p.expect(")", "')' after all("); err != nil {
			return nil, err
		}
		return selAll{}, nil
	case key == "has" && p.peek("("):
		p.accept("(")
		k := p.word()
		if k == "" {
			return nil, p.errorf("a label key inside has(...)")
		}
		if err := p.expect(")", "')' after has("+k); err != nil {
			return nil, err
		}
		return selHas{k}, nil
	}
	p.skipSpace()
	if p.accept("==") {
		v, err := p.quoted()
		if err != nil {
			return nil, err
		}
		return selEq{key, v}, nil
	}
	if p.accept("!=") {
		v, err := p.quoted()
		if err != nil {
			return nil, err
		}
		return selNe{key, v}, nil
	}
	opPos := p.pos
	switch op := p.word(); op {
	case "in":
		vs, err := p.set()
		if err != nil {
			return nil, err
		}
		return selIn{key, vs}, nil
	case "not":
		if w := p.word(); w != "in" {
			p.pos -= len(w)
			return nil, p.errorf("'in' after 'not'")
		}
		vs, err := p.set()
		if err != nil {
			return nil, err
		}
		return selNotIn{key, vs}, nil
	case "contains":
		v, err := p.quoted()
		if err != nil {
			return nil, err
		}
		return selContains{key, v}, nil
	case "starts", "ends":
		if w := p.word(); w != "with" {
			p.pos -= len(w)
			return nil, p.errorf("'with' after '" + op + "'")
		}
		v, err := p.quoted()
		if err != nil {
			return nil, err
		}
		if op == "starts" {
			return selStartsWith{key, v}, nil
		}
		return selEndsWith{key, v}, nil
	}
	p.pos = opPos
	return nil, p.errorf(fmt.Sprintf("an operator (==, !=, in, not in, contains, starts with, ends with) after label key %q", key))
}

// quoted parses a string in single or double quotes.
func (p *selParser) quoted() (string, error) {
	p.skipSpace()
	if p.pos >= len(p.src) || (p.src[p.pos] != '\'' && p.src[p.pos] != '"') {
		return "", p.errorf(`a quoted string ('...' or "...")`)
	}
	q := p.src[p.pos]
	end := strings.IndexByte(p.src[p.pos+1:], q)
	if end < 0 {
		return "", p.errorf("a closing " + string(q) + " for this string")
	}
	v := p.src[p.pos+1 : p.pos+1+end]
	p.pos += end + 2
	return v, nil
}

// set parses {'a', 'b'}; the result is sorted and without duplicates.
func (p *selParser) set() ([]string, error) {
	if err := p.expect("{", "'{' to start a set of values"); err != nil {
		return nil, err
	}
	var vs []string
	if p.accept("}") {
		return vs, nil
	}
	for {
		v, err := p.quoted()
		if err != nil {
			return nil, err
		}
		vs = append(vs, v)
		if p.accept("}") {
			break
		}
		if err := p.expect(",", "',' or '}' in a set of values"); err != nil {
			return nil, err
		}
	}
	slices.Sort(vs)
	return slices.Compact(vs), nil
}

// quote renders a value for String: double quotes unless the value holds
// one (a parsed value never holds both kinds).
func quote(v string) string {
	if strings.Contains(v, `"`) {
		return "'" + v + "'"
	}
	return `"` + v + `"`
}

func quoteSet(vs []string) string {
	q := make([]string, len(vs))
	for i, v := range vs {
		q[i] = quote(v)
	}
	return "{" + strings.Join(q, ", ") + "}"
}

type selAll struct{}

func (selAll) Matches(map[string]string) bool { return true }
func (selAll) String() string                 { return "all()" }

type selHas struct{ key string }

func (s selHas) Matches(l map[string]string) bool { _, ok := l[s.key]; return ok }
func (s selHas) String() string                   { return "has(" + s.key + ")" }

type selEq struct{ key, val string }

func (s selEq) Matches(l map[string]string) bool {
	v, ok := l[s.key]
	return ok && v == s.val
}
func (s selEq) String() string { return s.key + " == " + quote(s.val) }

type selNe struct{ key, val string }

func (s selNe) Matches(l map[string]string) bool {
	v, ok := l[s.key]
	return !ok || v != s.val
}
func (s selNe) String() string { return s.key + " != " + quote(s.val) }

type selIn struct {
	key  string
	vals []string
}

func (s selIn) Matches(l map[string]string) bool {
	v, ok := l[s.key]
	if !ok {
		return false
	}
	_, found := slices.BinarySearch(s.vals, v)
	return found
}
func (s selIn) String() string { return s.key + " in " + quoteSet(s.vals) }

type selNotIn struct {
	key  string
	vals []string
}

func (s selNotIn) Matches(l map[string]string) bool {
	v, ok := l[s.key]
	if !ok {
		return true
	}
	_, found := slices.BinarySearch(s.vals, v)
	return !found
}
func (s selNotIn) String() string { return s.key + " not in " + quoteSet(s.vals) }

type selContains struct{ key, val string }

func (s selContains) Matches(l map[string]string) bool {
	v, ok := l[s.key]
	return ok && strings.Contains(v, s.val)
}
func (s selContains) String() string { return s.key + " contains " + quote(s.val) }

type selStartsWith struct{ key, val string }

func (s selStartsWith) Matches(l map[string]string) bool {
	v, ok := l[s.key]
	return ok && strings.HasPrefix(v, s.val)
}
func (s selStartsWith) String() string { return s.key + " starts with " + quote(s.val) }

type selEndsWith struct{ key, val string }

func (s selEndsWith) Matches(l map[string]string) bool {
	v, ok := l[s.key]
	return ok && strings.HasSuffix(v, s.val)
}
func (s selEndsWith) String() string { return s.key + " ends with " + quote(s.val) }

type selNot struct{ x Selector }

func (s selNot) Matches(l map[string]string) bool { return !s.x.Matches(l) }
func (s selNot) String() string {
	switch s.x.(type) {
	case selAnd, selOr:
		return "!(" + s.x.String() + ")"
	}
	return "!" + s.x.String()
}

type selAnd struct{ terms []Selector }

// newAnd flattens nested conjunctions so that String is canonical.
func newAnd(terms []Selector) Selector {
	var flat []Selector
	for _, t := range terms {
		if a, ok := t.(selAnd); ok {
			flat = append(flat, a.terms...)
		} else {
			flat = append(flat, t)
		}
	}
	return selAnd{flat}
}

func (s selAnd) Matches(l map[string]string) bool {
	for _, t := range s.terms {
		if !t.Matches(l) {
			return false
		}
	}
	return true
}

func (s selAnd) String() string {
	parts := make([]string, len(s.terms))
	for i, t := range s.terms {
		if _, ok := t.(selOr); ok {
			parts[i] = "(" + t.String() + ")"
		} else {
			parts[i] = t.String()
		}
	}
	return strings.Join(parts, " && ")
}

type selOr struct{ terms []Selector }

// newOr flattens nested disjunctions so that String is canonical.
func newOr(terms []Selector) Selector {
	var flat []Selector
	for _, t := range terms {
		if o, ok := t.(selOr); ok {
			flat = append(flat, o.terms...)
		} else {
			flat = append(flat, t)
		}
	}
	return selOr{flat}
}

func (s selOr) Matches(l map[string]string) bool {
	for _, t := range s.terms {
		if t.Matches(l) {
			return true
		}
	}
	return false
}

func (s selOr) String() string {
	parts := make([]string, len(s.terms))
	for i, t := range s.terms {
		parts[i] = t.String()
	}
	return strings.Join(parts, " || ")
}
