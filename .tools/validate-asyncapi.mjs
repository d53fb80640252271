// Parse an AsyncAPI document with the AsyncAPI project's own parser and print its
// diagnostics as JSON lines; exit 1 when any is of error severity (or nothing parsed).
//   node .tools/validate-asyncapi.mjs schemas/asyncapi.yaml
// tests/contract/test_asyncapi.py runs it (scripts/bootstrap installs the parser).
import { resolve } from 'node:path';
import { Parser, fromFile, DiagnosticSeverity } from '@asyncapi/parser';

const path = resolve(process.argv[2] ?? 'schemas/asyncapi.yaml');
const parser = new Parser();
const { document, diagnostics } = await fromFile(parser, path).parse();
const names = Object.fromEntries(Object.entries(DiagnosticSeverity).map(([k, v]) => [v, k]));
let errors = 0;
for (const d of diagnostics) {
  if (d.severity === DiagnosticSeverity.Error) errors += 1;
  console.log(JSON.stringify({
    severity: names[d.severity] ?? String(d.severity),
    code: d.code,
    message: d.message,
    path: d.path.join('/'),
  }));
}
if (document === undefined) {
  console.log(JSON.stringify({ severity: 'Error', code: 'no-document', message: 'nothing parsed', path: '' }));
  process.exit(1);
}
console.log(JSON.stringify({
  summary: true,
  asyncapi: document.version(),
  channels: document.channels().all().map((c) => c.address()),
  // Resolved payloads and headers: the JSON Schemas' top-level properties, per message.
  messages: Object.fromEntries(document.components().messages().all().map((m) => [m.id(), {
    payload: Object.keys(m.payload()?.properties() ?? {}),
    headers: Object.keys(m.headers()?.properties() ?? {}),
  }])),
  errors,
}));
process.exit(errors > 0 ? 1 : 0);
