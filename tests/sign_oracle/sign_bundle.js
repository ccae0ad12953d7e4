// Independent signer for moat's signing tests (tests/signing_interop.rs):
// makes a Sigstore bundle v0.3 over an in-toto statement, signed with a P-256
// key from a PEM file, offline.
//
// usage: node sign_bundle.js (--sigstore-sign | --by-hand) KEY.pem STATEMENT.json > BUNDLE.json
//
// --sigstore-sign: @sigstore/sign's DSSEBundleBuilder with our own Signer and
//   no witnesses (no Fulcio, no Rekor, no TSA). It signs the DSSE PAE with
//   the key and records verificationMaterial.publicKey.hint (we give it
//   base64(sha256(SPKI DER)), as moat does); tlogEntries and
//   rfc3161Timestamps stay empty.
// --by-hand: the same bundle assembled with node's crypto only (no sigstore
//   code), so the verifier oracle is tested against something it did not make.
'use strict';
const crypto = require('crypto');
const fs = require('fs');

function fail(msg) {
  process.stderr.write(`sign_bundle: ${msg}\n`);
  process.exit(1);
}

const [mode, keyPath, stmtPath] = process.argv.slice(2);
if (!stmtPath || !['--sigstore-sign', '--by-hand'].includes(mode)) fail('usage: sign_bundle.js (--sigstore-sign | --by-hand) KEY.pem STATEMENT.json');
const key = crypto.createPrivateKey(fs.readFileSync(keyPath, 'utf8'));
const spki = crypto.createPublicKey(key).export({ type: 'spki', format: 'der' });
const hint = crypto.createHash('sha256').update(spki).digest('base64');
const payload = fs.readFileSync(stmtPath);
const payloadType = 'application/vnd.in-toto+json';

// DSSE v1 pre-authentication encoding.
function pae(type, body) {
  const t = Buffer.from(type, 'utf8');
  return Buffer.concat([Buffer.from(`DSSEv1 ${t.length} `), t, Buffer.from(` ${body.length} `), body]);
}
function sign(data) {
  return crypto.sign('sha256', data, key); // DER ECDSA signature
}

async function main() {
  if (mode === '--by-hand') {
    const bundle = {
      mediaType: 'application/vnd.dev.sigstore.bundle.v0.3+json',
      verificationMaterial: { publicKey: { hint }, tlogEntries: [] },
      dsseEnvelope: {
        payload: payload.toString('base64'),
        payloadType,
        signatures: [{ sig: sign(pae(payloadType, payload)).toString('base64') }],
      },
    };
    return bundle;
  }
  const { DSSEBundleBuilder } = require('@sigstore/sign');
  const { bundleToJSON } = require('@sigstore/bundle');
  const signer = {
    sign: async (data) => ({
      signature: sign(data),
      key: { $case: 'publicKey', publicKey: crypto.createPublicKey(key).export({ type: 'spki', format: 'pem' }), hint },
    }),
  };
  const builder = new DSSEBundleBuilder({ signer, witnesses: [] });
  const bundle = await builder.create({ data: payload, type: payloadType });
  return bundleToJSON(bundle);
}

main().then(
  (b) => process.stdout.write(JSON.stringify(b) + '\n'),
  (e) => fail(e.stack || String(e)),
);
