#!/bin/sh
# Throwaway PKI for the integration tests (same shape as a public DoT provider's):
#   root.pem (RSA root) -> int.pem (ECDSA intermediate) -> leaf.pem (ECDSA, CN/SAN dns.test,
#   SAN IP 127.0.0.1 and ::1); chain.pem = leaf + intermediate; leaf.key.
# Plus an unrelated second hierarchy: other-root.pem -> other-leaf.pem (same names),
#   other-chain.pem, other-leaf.key (used for the "untrusted root" cases).
# Plus two more leaves under the main intermediate, for tests/test_attack_tls.py:
#   wrongname-chain.pem, wrongname.key: ECDSA leaf for evil.test (CN/SAN), a valid chain for
#     the wrong name;
#   rogue-chain.pem, rogue.key: ECDSA leaf for NAME with a new key: a valid chain for the right
#     name, but not the key of leaf.pem (fails a pin of leaf.pem's key).
# usage: pki.sh DIR [NAME]
set -eu
d=$1; name=${2:-dns.test}
mkdir -p "$d"; cd "$d"
ossl() { openssl "$@" 2>/dev/null; }

# main hierarchy
ossl req -x509 -newkey rsa:2048 -nodes -keyout root.key -out root.pem -days 3650 \
  -subj "/CN=dotproxy Test Root CA" \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
ossl ecparam -name prime256v1 -genkey -noout -out int.key
ossl req -new -key int.key -out int.csr -subj "/CN=dotproxy Test Intermediate CA"
printf 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n' > int.ext
ossl x509 -req -in int.csr -CA root.pem -CAkey root.key -CAcreateserial -out int.pem \
  -days 1825 -extfile int.ext
ossl ecparam -name prime256v1 -genkey -noout -out leaf.key
ossl req -new -key leaf.key -out leaf.csr -subj "/CN=$name"
printf 'subjectAltName=DNS:%s,IP:127.0.0.1,IP:::1\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n' \
  "$name" > leaf.ext
ossl x509 -req -in leaf.csr -CA int.pem -CAkey int.key -CAcreateserial -out leaf.pem \
  -days 365 -extfile leaf.ext
cat leaf.pem int.pem > chain.pem

# unrelated hierarchy: root -> leaf directly, same names
ossl req -x509 -newkey rsa:2048 -nodes -keyout other-root.key -out other-root.pem -days 3650 \
  -subj "/CN=Unrelated Test Root CA" \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
ossl ecparam -name prime256v1 -genkey -noout -out other-leaf.key
ossl req -new -key other-leaf.key -out other-leaf.csr -subj "/CN=$name"
ossl x509 -req -in other-leaf.csr -CA other-root.pem -CAkey other-root.key -CAcreateserial \
  -out other-leaf.pem -days 365 -extfile leaf.ext
cp other-leaf.pem other-chain.pem

# more leaves under the main intermediate
ossl ecparam -name prime256v1 -genkey -noout -out wrongname.key
ossl req -new -key wrongname.key -out wrongname.csr -subj "/CN=evil.test"
printf 'subjectAltName=DNS:evil.test\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n' \
  > wrongname.ext
ossl x509 -req -in wrongname.csr -CA int.pem -CAkey int.key -CAcreateserial -out wrongname.pem \
  -days 365 -extfile wrongname.ext
cat wrongname.pem int.pem > wrongname-chain.pem
ossl ecparam -name prime256v1 -genkey -noout -out rogue.key
ossl req -new -key rogue.key -out rogue.csr -subj "/CN=$name"
ossl x509 -req -in rogue.csr -CA int.pem -CAkey int.key -CAcreateserial -out rogue.pem \
  -days 365 -extfile leaf.ext
cat rogue.pem int.pem > rogue-chain.pem

# sanity: the chains verify against their own roots only
openssl verify -CAfile root.pem -untrusted int.pem leaf.pem >/dev/null
openssl verify -CAfile other-root.pem other-leaf.pem >/dev/null
openssl verify -CAfile root.pem -untrusted int.pem wrongname.pem >/dev/null
openssl verify -CAfile root.pem -untrusted int.pem rogue.pem >/dev/null
if openssl verify -CAfile other-root.pem -untrusted int.pem leaf.pem >/dev/null 2>&1; then
  echo "pki.sh: unrelated root unexpectedly verifies the main leaf" >&2; exit 1
fi
