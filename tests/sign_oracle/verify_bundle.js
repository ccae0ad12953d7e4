// Independent verifier for moat's Sigstore bundles (tests/signing_interop.rs):
// @sigstore/verify checks a bundle v0.3 against ONE trusted public key, fully
// offline, then this script checks the in-toto statement it carries.
//
// usage: node verify_bundle.js BUNDLE.json PUB.pem [--subject sha256:HEX] [--predicate-type URI]
// exit 0 and prints {"ok":true,...} on success; exit 1 and prints the reason on stderr.
//
// How @sigstore/verify is driven without Fulcio, Rekor or a TSA:
// - toTrustMaterial(root, keys): the trusted root is empty (no CAs, no tlogs,
//   no ctlogs, no TSAs); `keys` maps a key hint to {rawBytes: SPKI DER}. The
//   verifier looks the bundle's verificationMaterial.publicKey.hint up in that
//   map, so a bundle whose hint is not base64(sha256(SPKI DER)) of our key is
//   refused ("key not found").
// - new Verifier(trust, {tlogThreshold: 0, ctlogThreshold: 0, tsaThreshold: 0}):
//   the defaults (tlogThreshold 1) demand a transparency-log entry; with 0 a
//   bundle with no tlog entries and no timestamps verifies on its signature
//   alone. Any tlog entry or timestamp present is still checked (and fails,
//   since no log or TSA is trusted).
'use strict';
const crypto = require('crypto');
const fs = require('fs');
const { bundleFromJSON, BUNDLE_V03_MEDIA_TYPE } = require('@sigstore/bundle');
const { Verifier, toSignedEntity, toTrustMaterial } = require('@sigstore/verify');

function fail(msg) {
  process.stderr.write(`verify_bundle: ${msg}\n`);
  process.exit(1);
}

const args = process.argv.slice(2);
if (args.length < 2) fail('usage: verify_bundle.js BUNDLE.json PUB.pem [--subject sha256:HEX] [--predicate-type URI]');
const [bundlePath, pubPath] = args;
let wantSubject = null;
let wantPredicate = null;
for (let i = 2; i < args.length; i += 2) {
  if (args[i] === '--subject') wantSubject = args[i + 1];
  else if (args[i] === '--predicate-type') wantPredicate = args[i + 1];
  else fail(`unknown option ${args[i]}`);
}

let json;
try {
  json = JSON.parse(fs.readFileSync(bundlePath, 'utf8'));
} catch (e) {
  fail(`bundle is not JSON: ${e.message}`);
}
if (json.mediaType !== BUNDLE_V03_MEDIA_TYPE) fail(`bundle mediaType is ${JSON.stringify(json.mediaType)}, not ${BUNDLE_V03_MEDIA_TYPE}`);

const spki = crypto.createPublicKey(fs.readFileSync(pubPath, 'utf8')).export({ type: 'spki', format: 'der' });
const hint = crypto.createHash('sha256').update(spki).digest('base64');

let bundle;
try {
  bundle = bundleFromJSON(json);
} catch (e) {
  fail(`bundle does not parse as a Sigstore bundle: ${e.message} ${JSON.stringify(e.fields || [])}`);
}
if (bundle.content.$case !== 'dsseEnvelope') fail(`bundle content is ${bundle.content.$case}, not dsseEnvelope`);
if (bundle.verificationMaterial.content.$case !== 'publicKey') fail(`bundle verification material is ${bundle.verificationMaterial.content.$case}, not publicKey`);

const trust = toTrustMaterial(
  { certificateAuthorities: [], timestampAuthorities: [], tlogs: [], ctlogs: [] },
  { [hint]: { rawBytes: spki } },
);
const verifier = new Verifier(trust, { tlogThreshold: 0, ctlogThreshold: 0, tsaThreshold: 0 });
try {
  verifier.verify(toSignedEntity(bundle));
} catch (e) {
  fail(`@sigstore/verify refused the bundle: ${e.code || ''} ${e.message}`);
}

// The signature is good; now what it says.
const env = bundle.content.dsseEnvelope;
if (env.payloadType !== 'application/vnd.in-toto+json') fail(`DSSE payloadType is ${JSON.stringify(env.payloadType)}`);
let stmt;
try {
  stmt = JSON.parse(Buffer.from(env.payload).toString('utf8'));
} catch (e) {
  fail(`DSSE payload is not JSON: ${e.message}`);
}
if (stmt._type !== 'https://in-toto.io/Statement/v1') fail(`statement _type is ${JSON.stringify(stmt._type)}`);
if (wantPredicate !== null && stmt.predicateType !== wantPredicate) fail(`predicateType is ${JSON.stringify(stmt.predicateType)}, want ${wantPredicate}`);
if (wantSubject !== null) {
  const [alg, hex] = wantSubject.split(':');
  const subjects = Array.isArray(stmt.subject) ? stmt.subject : [];
  if (!subjects.some((s) => s && s.digest && s.digest[alg] === hex)) fail(`no statement subject has digest ${wantSubject}: ${JSON.stringify(stmt.subject)}`);
}
process.stdout.write(JSON.stringify({ ok: true, hint, predicateType: stmt.predicateType, subject: stmt.subject }) + '\n');
