package cacheaside

import (
	"encoding/json"
	"errors"
	"testing"
)

func TestCodec(t *testing.T) {
	b, err := encodeJSON(json.RawMessage(`{"a":1}`))
	if err != nil || string(b) != `{"a":1}` {
		t.Fatalf("encodeJSON(raw) = %s, %v", b, err)
	}
	rm := json.RawMessage(`[1]`)
	if b, _ := encodeJSON(&rm); string(b) != `[1]` {
		t.Fatalf("encodeJSON(*raw) = %s", b)
	}
	if _, err := encodeJSON(make(chan int)); err == nil {
		t.Fatal("encodeJSON(chan) = nil error")
	}
	var dst json.RawMessage
	if err := decodeJSON("k", []byte("not json"), &dst); err != nil || string(dst) != "not json" {
		t.Fatalf("decodeJSON into RawMessage = %s, %v; want bytes untouched", dst, err)
	}
	var u User
	if err := decodeJSON("k", []byte(`{"id":"x"}`), &u); !errors.Is(err, ErrDecode) {
		t.Fatalf("decodeJSON type mismatch = %v, want ErrDecode", err)
	}
	if got := toRaw([][]byte{nil, []byte("1")}); got[0] != nil || string(got[1]) != "1" {
		t.Fatalf("toRaw = %q", got)
	}
}
