// Categorize products with the exported model from Node.js.
// Usage: node categorize.js MODEL_PATH < products.json
// products.json: [{"title": "...", "concatenated_tags": "..."}, ...]
// Prints {"labels": [...], "probabilities": [[...], ...]} on stdout.
"use strict";
const fs = require("fs");
const ort = require("onnxruntime-node");

async function main() {
  const [modelPath] = process.argv.slice(2);
  const products = JSON.parse(fs.readFileSync(0, "utf8"));
  if (products.length === 0) {
    // The graph cannot run an empty batch; there is nothing to label anyway.
    process.stdout.write(JSON.stringify({ labels: [], probabilities: [] }));
    return;
  }
  const session = await ort.InferenceSession.create(modelPath, { executionProviders: ["cpu"] });
  const column = (name) => new ort.Tensor("string", products.map((p) => p[name] || ""), [products.length]);
  const out = await session.run({ title: column("title"), concatenated_tags: column("concatenated_tags") });
  const k = out.probabilities.dims[1];
  const flat = Array.from(out.probabilities.data);
  const probabilities = products.map((_, i) => flat.slice(i * k, (i + 1) * k));
  process.stdout.write(JSON.stringify({ labels: Array.from(out.label.data), probabilities }));
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : String(err));
  process.exit(1);
});
