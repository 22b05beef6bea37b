module fp

go 1.19

require github.com/linkedin/goavro/v2 v2.10.1

require github.com/golang/snappy v0.0.1 // indirect

replace github.com/linkedin/goavro/v2 => /usr/share/gocode/src/github.com/linkedin/goavro

replace github.com/golang/snappy => /usr/share/gocode/src/github.com/golang/snappy
