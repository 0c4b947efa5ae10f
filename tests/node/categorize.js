// Categorize products with the exported model from Node.js, as a team using
// onnxruntime-node would.
//
// Usage: node categorize.js MODEL_PATH [PRODUCTS_JSON] [--batch-size K]
//   PRODUCTS_JSON: a file holding [{"title": "...", "concatenated_tags": "...",
//   "seller_id": "...", "price": 12.5, "weight": 300, "minimum_quantity": 1,
//   "express_delivery": true}, ...]; standard input when absent or "-". A missing or
//   null field is unknown: "" for the strings, NaN for the numbers.
//   --batch-size K: run the graph on K products at a time (default: all at once).
// Prints {"labels": [...], "probabilities": [[...], ...]} on standard output.
"use strict";
const fs = require("fs");
const ort = require("onnxruntime-node");

function parseArgs(argv) {
  const positional = [];
  let batchSize = 0;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--batch-size") {
      batchSize = Number(argv[++i]);
      if (!Number.isInteger(batchSize) || batchSize < 1) throw new Error("--batch-size needs a positive integer");
    } else {
      positional.push(argv[i]);
    }
  }
  if (positional.length < 1 || positional.length > 2) {
    throw new Error("usage: node categorize.js MODEL_PATH [PRODUCTS_JSON] [--batch-size K]");
  }
  const [modelPath, input = "-"] = positional;
  return { modelPath, input, batchSize };
}

// The model's inputs: strings, then float32 numbers (NaN = unknown). A model from
// before the listing fields has only the first two; feed what it declares.
const STRINGS = ["title", "concatenated_tags", "seller_id"];
const NUMBERS = ["price", "weight", "minimum_quantity", "express_delivery"];

function text(product, name) {
  const value = product[name];
  if (value === undefined || value === null) return "";
  if (name === "seller_id" && Number.isSafeInteger(value)) return String(value);
  if (typeof value !== "string") throw new Error(`${name} must be a string, got ${typeof value}`);
  // Surrounding white space is no part of a seller id (the model's training read them so).
  return name === "seller_id" ? value.trim() : value;
}

function number(product, name) {
  const value = product[name];
  if (value === undefined || value === null) return NaN;
  if (typeof value === "boolean") return value ? 1 : 0;
  if (typeof value !== "number") throw new Error(`${name} must be a number, got ${typeof value}`);
  return value;
}

function feeds(session, batch) {
  const out = {};
  for (const name of session.inputNames) {
    if (STRINGS.includes(name)) {
      out[name] = new ort.Tensor("string", batch.map((p) => text(p, name)), [batch.length]);
    } else if (NUMBERS.includes(name)) {
      out[name] = new ort.Tensor("float32", Float32Array.from(batch, (p) => number(p, name)), [batch.length]);
    } else {
      throw new Error(`the model has an input this script does not know: ${name}`);
    }
  }
  return out;
}

async function main() {
  const { modelPath, input, batchSize } = parseArgs(process.argv.slice(2));
  const products = JSON.parse(fs.readFileSync(input === "-" ? 0 : input, "utf8"));
  if (!Array.isArray(products)) throw new Error("the input must be a JSON array of products");
  const labels = [];
  const probabilities = [];
  if (products.length === 0) {
    // The graph is never run on an empty batch; there is nothing to label anyway.
    process.stdout.write(JSON.stringify({ labels, probabilities }));
    return;
  }
  const session = await ort.InferenceSession.create(modelPath, { executionProviders: ["cpu"] });
  const step = batchSize || products.length;
  for (let start = 0; start < products.length; start += step) {
    const batch = products.slice(start, start + step);
    const out = await session.run(feeds(session, batch));
    const [rows, k] = out.probabilities.dims;
    if (rows !== batch.length || out.label.dims[0] !== batch.length) {
      throw new Error(`expected ${batch.length} rows, got labels ${out.label.dims} and probabilities ${out.probabilities.dims}`);
    }
    // float32 -> JS double is exact, and JSON prints the shortest decimal that reads
    // back to the same double, so Python recovers the very same float32 values.
    const flat = Array.from(out.probabilities.data);
    for (let i = 0; i < rows; i++) {
      labels.push(out.label.data[i]);
      probabilities.push(flat.slice(i * k, (i + 1) * k));
    }
  }
  process.stdout.write(JSON.stringify({ labels, probabilities }));
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : String(err));
  process.exit(1);
});
