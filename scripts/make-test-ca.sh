#!/usr/bin/env bash
# scripts/make-test-ca.sh DIR - a throw-away PKI for keel serve / keel replicate
# tests and the demo, made with the openssl CLI (never use it in production):
#   ca.crt ca.key            the test CA
#   server.crt server.key    server certificate for localhost / 127.0.0.1 / ::1
#   client.crt client.key    a client certificate signed by the CA
#   self.crt self.key        a self-signed client certificate (must be refused)
#   other-ca.crt             another CA, and other.crt other.key signed by it
#                            (must be refused)
# EC P-256 keys, SHA-256 signatures, 2 days of validity.
set -eu
d=${1:?usage: make-test-ca.sh DIR}
mkdir -p "$d"
cd "$d"
days=2
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
ca() { # ca NAME SUBJECT
	key "$1.key"
	openssl req -x509 -new -key "$1.key" -sha256 -days $days -subj "$2" \
		-addext basicConstraints=critical,CA:TRUE \
		-addext keyUsage=critical,keyCertSign,cRLSign -out "$1.crt" 2>/dev/null
}
leaf() { # leaf NAME CA SUBJECT EXT
	key "$1.key"
	openssl req -new -key "$1.key" -subj "$3" -out "$1.csr" 2>/dev/null
	printf '%s\n' "$4" > "$1.ext"
	openssl x509 -req -in "$1.csr" -CA "$2.crt" -CAkey "$2.key" -CAcreateserial \
		-days $days -sha256 -extfile "$1.ext" -out "$1.crt" 2>/dev/null
	rm -f "$1.csr" "$1.ext"
}
ca ca "/CN=keel test CA"
leaf server ca "/CN=localhost" \
	"basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1"
leaf client ca "/CN=keel-test-client" \
	"basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
key self.key
openssl req -x509 -new -key self.key -sha256 -days $days -subj "/CN=keel-test-client" \
	-out self.crt 2>/dev/null
ca other-ca "/CN=another CA"
leaf other other-ca "/CN=keel-test-client" \
	"basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
rm -f ./*.srl
chmod 600 ./*.key
echo "test PKI in $d: ca.crt, server.{crt,key}, client.{crt,key}, self.{crt,key}, other.{crt,key}"
