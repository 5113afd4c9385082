// The official OpenAI Node SDK against llmtest: the calls users make, and
// the typed errors the SDK raises for the API's error answers. Run by
// llmtest's TestOfficialNodeSDK with LLMTEST_URL and LLMTEST_KEY set.
import OpenAI, { AuthenticationError, BadRequestError, NotFoundError } from "openai";

const baseURL = process.env.LLMTEST_URL;
const client = new OpenAI({ apiKey: process.env.LLMTEST_KEY, baseURL, maxRetries: 0 });
let passed = 0, failed = 0;

async function check(name, fn) {
  try {
    await fn();
    passed++;
    console.log(`ok   ${name}`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name}: ${e && e.stack || e}`);
  }
}

function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}

async function rejects(fn, type) {
  try {
    await fn();
  } catch (e) {
    assert(e instanceof type, `want ${type.name}, got ${e && e.constructor && e.constructor.name}: ${e && e.message}`);
    return e;
  }
  throw new Error(`want ${type.name}, got no error`);
}

await check("chat", async () => {
  const r = await client.chat.completions.create({ model: "gpt-4o", messages: [{ role: "user", content: "hello there" }] });
  assert(r.choices[0].message.content === "You said: hello there", JSON.stringify(r));
  assert(r.choices[0].finish_reason === "stop", r.choices[0].finish_reason);
  assert(r.usage.total_tokens > 0, "usage");
});

await check("chat stream with usage", async () => {
  const stream = await client.chat.completions.create({
    model: "gpt-4o", messages: [{ role: "user", content: "stream me" }], stream: true, stream_options: { include_usage: true },
  });
  let text = "", usage = null;
  for await (const chunk of stream) {
    for (const c of chunk.choices) text += c.delta.content ?? "";
    if (chunk.usage) usage = chunk.usage;
  }
  assert(text === "You said: stream me", text);
  assert(usage && usage.completion_tokens === 4, JSON.stringify(usage));
});

await check("max_completion_tokens", async () => {
  const r = await client.chat.completions.create({ model: "gpt-4o", messages: [{ role: "user", content: "a b c d" }], max_completion_tokens: 2 });
  assert(r.choices[0].finish_reason === "length", r.choices[0].finish_reason);
});

await check("embeddings", async () => {
  const r = await client.embeddings.create({ model: "text-embedding-3-small", input: ["one", "two"] });
  assert(r.data.length === 2 && r.data[0].embedding.length > 0, JSON.stringify(r).slice(0, 200));
});

await check("models", async () => {
  const list = await client.models.list();
  const ids = [];
  for await (const m of list) ids.push(m.id);
  assert(ids.includes("gpt-4o"), ids.join(","));
  const m = await client.models.retrieve("gpt-4o");
  assert(m.id === "gpt-4o", JSON.stringify(m));
});

await check("NotFoundError for an unknown model", async () => {
  const e = await rejects(() => client.models.retrieve("gpt-nonexistent"), NotFoundError);
  assert(e.code === "model_not_found", e.code);
  await rejects(() => client.chat.completions.create({ model: "gpt-nonexistent", messages: [{ role: "user", content: "x" }] }), NotFoundError);
});

await check("BadRequestError with param", async () => {
  const e = await rejects(() => client.chat.completions.create({ model: "gpt-4o", messages: [{ role: "user", content: "x" }], temperature: 3 }), BadRequestError);
  assert(e.param === "temperature", e.param);
  await rejects(() => client.chat.completions.create({ model: "gpt-4o", messages: [] }), BadRequestError);
});

await check("AuthenticationError", async () => {
  const wrong = new OpenAI({ apiKey: "sk-not-the-right-key-000000", baseURL, maxRetries: 0 });
  const e = await rejects(() => wrong.chat.completions.create({ model: "gpt-4o", messages: [{ role: "user", content: "x" }] }), AuthenticationError);
  assert(e.code === "invalid_api_key", e.code);
});

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
