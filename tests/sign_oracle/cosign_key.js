// Independent implementation of cosign's encrypted private key file, for
// moat's signing tests (tests/signing*.rs): a PEM block "ENCRYPTED SIGSTORE
// PRIVATE KEY" (older cosign: "ENCRYPTED COSIGN PRIVATE KEY") whose body is
// JSON {"kdf":{"name":"scrypt","params":{"N","r","p"},"salt"},
// "cipher":{"name":"nacl/secretbox","nonce"},"ciphertext"} (byte fields in
// standard base64); the plaintext is the PKCS#8 DER private key, the
// secretbox key scrypt(password, salt, N, r, p, 32). Node's crypto does
// scrypt and the EC keys; tweetnacl does XSalsa20-Poly1305.
//
// usage: node cosign_key.js encrypt PRIVATE.pem > cosign.key   (password: env COSIGN_PASSWORD)
//        node cosign_key.js decrypt cosign.key > private.pem   (password: env COSIGN_PASSWORD)
'use strict';
const crypto = require('crypto');
const fs = require('fs');
const nacl = require('tweetnacl');

function fail(msg) {
  process.stderr.write(`cosign_key: ${msg}\n`);
  process.exit(1);
}
const [cmd, file] = process.argv.slice(2);
const password = Buffer.from(process.env.COSIGN_PASSWORD ?? '', 'utf8');
const kdf = (salt, N, r, p) => crypto.scryptSync(password, salt, 32, { N, r, p, maxmem: 512 * 1024 * 1024 });

if (cmd === 'encrypt') {
  const key = crypto.createPrivateKey(fs.readFileSync(file, 'utf8'));
  const der = key.export({ type: 'pkcs8', format: 'der' });
  const salt = crypto.randomBytes(32);
  const nonce = crypto.randomBytes(24);
  const N = 65536, r = 8, p = 1; // what cosign generate-key-pair writes
  const box = nacl.secretbox(new Uint8Array(der), new Uint8Array(nonce), new Uint8Array(kdf(salt, N, r, p)));
  const body = JSON.stringify({
    kdf: { name: 'scrypt', params: { N, r, p }, salt: salt.toString('base64') },
    cipher: { name: 'nacl/secretbox', nonce: nonce.toString('base64') },
    ciphertext: Buffer.from(box).toString('base64'),
  });
  const b64 = Buffer.from(body).toString('base64').match(/.{1,64}/g).join('\n');
  process.stdout.write(`-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n${b64}\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n`);
} else if (cmd === 'decrypt') {
  const text = fs.readFileSync(file, 'utf8');
  const m = text.match(/^-----BEGIN (ENCRYPTED SIGSTORE PRIVATE KEY|ENCRYPTED COSIGN PRIVATE KEY)-----\n([A-Za-z0-9+/=\n]+)-----END \1-----\n?$/);
  if (!m) fail('not a PEM block ENCRYPTED SIGSTORE PRIVATE KEY (or ENCRYPTED COSIGN PRIVATE KEY) and nothing else');
  let d;
  try {
    d = JSON.parse(Buffer.from(m[2].replace(/\n/g, ''), 'base64').toString('utf8'));
  } catch (e) {
    fail(`PEM body is not JSON: ${e.message}`);
  }
  if (d.kdf?.name !== 'scrypt') fail(`kdf is ${JSON.stringify(d.kdf?.name)}, not scrypt`);
  if (d.cipher?.name !== 'nacl/secretbox') fail(`cipher is ${JSON.stringify(d.cipher?.name)}, not nacl/secretbox`);
  const { N, r, p } = d.kdf.params || {};
  const salt = Buffer.from(d.kdf.salt, 'base64');
  const nonce = Buffer.from(d.cipher.nonce, 'base64');
  if (nonce.length !== 24) fail(`nonce is ${nonce.length} bytes, not 24`);
  const plain = nacl.secretbox.open(new Uint8Array(Buffer.from(d.ciphertext, 'base64')), new Uint8Array(nonce), new Uint8Array(kdf(salt, N, r, p)));
  if (!plain) fail('secretbox open failed (wrong password or damaged key)');
  const key = crypto.createPrivateKey({ key: Buffer.from(plain), format: 'der', type: 'pkcs8' });
  if (key.asymmetricKeyType !== 'ec' || key.asymmetricKeyDetails.namedCurve !== 'prime256v1') fail(`key is ${key.asymmetricKeyType} ${JSON.stringify(key.asymmetricKeyDetails)}, not P-256`);
  process.stdout.write(JSON.stringify({ kdf: { N, r, p, salt_len: salt.length }, pem: key.export({ type: 'pkcs8', format: 'pem' }) }) + '\n');
} else {
  fail('usage: cosign_key.js (encrypt PRIVATE.pem | decrypt cosign.key)');
}
