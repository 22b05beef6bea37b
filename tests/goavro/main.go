// Writes mle-stream messages with goavro's own single-object encoding (Codec.SingleFromNative).
// tests/test_producers.py holds what it printed (goavro 2.10.1 and Go 1.19 from Debian bookworm):
//
//	apt-get install golang-go golang-github-linkedin-goavro-dev
//	cd tests/goavro && GOFLAGS=-mod=mod GOPROXY=off go run . ../../schemas
//
// go.mod points at Debian's copy of goavro; the suite does not run this (no Go toolchain in CI).
package main

import (
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/linkedin/goavro/v2"
)

func read(dir, f string) string {
	b, err := os.ReadFile(dir + "/" + f)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func must(c *goavro.Codec, err error) *goavro.Codec {
	if err != nil {
		panic(err)
	}
	return c
}

func main() {
	dir := os.Args[1]
	pred := read(dir, "prediction.avsc")
	// goavro cannot refer to a type of another schema: inline it, under its full name.
	inlined := strings.Replace(strings.Replace(pred, `"name": "Prediction"`, `"name": "io.mlestream.Prediction"`, 1),
		`"namespace": "io.mlestream",`, "", 1)
	single := must(goavro.NewCodec(pred))
	batch := must(goavro.NewCodec(strings.Replace(read(dir, "prediction_batch.avsc"), `"io.mlestream.Prediction"`, inlined, 1)))
	p := func(id string, ms int64, score float64) map[string]interface{} {
		return map[string]interface{}{"prediction_id": id, "model": "fraud", "version": "2",
			"timestamp": time.UnixMilli(ms).UTC(), "score": goavro.Union("double", score),
			"segment": goavro.Union("map", map[string]interface{}{"country": "DE"})}
	}
	one, err := single.SingleFromNative(nil, p("g1", 1700000000000, 0.5))
	if err != nil {
		panic(err)
	}
	many, err := batch.SingleFromNative(nil, map[string]interface{}{"records": []interface{}{p("g2", 1700000000001, 0.25), p("g3", 1700000000002, 0.75)}})
	if err != nil {
		panic(err)
	}
	fmt.Println(hex.EncodeToString(one))
	fmt.Println(hex.EncodeToString(many))
}
