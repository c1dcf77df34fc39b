// Every call of the official ollama JavaScript client against ollama-proxy.
// Usage: OLLAMA_HOST=http://127.0.0.1:PORT node smoke.mjs
// Prints one JSON line per check; exits non-zero on the first failure.
import assert from 'node:assert/strict'
import { Ollama } from 'ollama'

const host = process.env.OLLAMA_HOST
assert.ok(host, 'set OLLAMA_HOST')
const ollama = new Ollama({ host })
const CHAT = 'google/gemini-pro'
const VISION = 'openai/gpt-4o-mini'
const EMBED = 'openai/text-embedding-3-small'
// A 1x1 PNG.
const PNG = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=='

const checks = {
  async version () {
    const { version } = await ollama.version()
    assert.match(version, /^\d+\.\d+\.\d+/)
  },
  async list () {
    const { models } = await ollama.list()
    assert.ok(models.some((m) => m.model === `${CHAT}:latest`))
  },
  async show () {
    const shown = await ollama.show({ model: VISION })
    assert.ok(shown.capabilities.includes('tools'))
    assert.equal(shown.model_info['gpt.context_length'], 128000)
  },
  async chat () {
    const answer = await ollama.chat({ model: CHAT, messages: [{ role: 'user', content: 'hello js' }] })
    assert.equal(answer.message.content, 'Echo: hello js')
    assert.equal(answer.done_reason, 'stop')
  },
  async chatStream () {
    let text = ''
    let last
    for await (const part of await ollama.chat({ model: CHAT, messages: [{ role: 'user', content: 'a b' }], stream: true })) {
      text += part.message.content
      last = part
    }
    assert.equal(text, 'Echo: a b')
    assert.equal(last.done, true)
  },
  async tools () {
    const tool = { type: 'function', function: { name: 'get_weather', parameters: { type: 'object', properties: { city: { type: 'string' } } } } }
    const messages = [{ role: 'user', content: 'call get_weather {"city": "Bern"}' }]
    const first = await ollama.chat({ model: VISION, messages, tools: [tool] })
    assert.deepEqual(first.message.tool_calls[0].function.arguments, { city: 'Bern' })
    messages.push(first.message, { role: 'tool', content: 'rain', tool_name: 'get_weather' })
    const second = await ollama.chat({ model: VISION, messages, tools: [tool] })
    assert.equal(second.message.content, 'Tool said: rain')
  },
  async images () {
    const answer = await ollama.chat({ model: VISION, messages: [{ role: 'user', content: 'look', images: [Buffer.from(PNG, 'base64')] }] })
    assert.equal(answer.message.content, 'Echo: look [image/png]')
  },
  async format () {
    const answer = await ollama.chat({ model: VISION, messages: [{ role: 'user', content: 'hi' }], format: { type: 'object', properties: { n: { type: 'integer' } } } })
    assert.deepEqual(JSON.parse(answer.message.content), { n: 1 })
  },
  async think () {
    const answer = await ollama.chat({ model: 'deepseek/deepseek-r1', messages: [{ role: 'user', content: 'why' }], think: true })
    assert.equal(answer.message.thinking, 'Thinking about: why')
    await assert.rejects(ollama.chat({ model: CHAT, messages: [{ role: 'user', content: 'x' }], think: true }), (error) => error.status_code === 400)
  },
  async generate () {
    const answer = await ollama.generate({ model: CHAT, prompt: 'x y' })
    assert.equal(answer.response, 'Echo: x y')
    assert.ok(answer.context.length > 0)
  },
  async generateStream () {
    let text = ''
    for await (const part of await ollama.generate({ model: VISION, prompt: 'see', images: [PNG], stream: true })) {
      text += part.response
    }
    assert.equal(text, 'Echo: see [image/png]')
  },
  async embed () {
    const { embeddings } = await ollama.embed({ model: EMBED, input: ['a', 'b'] })
    assert.equal(embeddings.length, 2)
  },
  async embeddings () {
    const { embedding } = await ollama.embeddings({ model: EMBED, prompt: 'a' })
    assert.equal(embedding.length, 8)
  },
  async ps () {
    const { models } = await ollama.ps()
    assert.ok(models.some((m) => m.name === `${CHAT}:latest` && m.size_vram === 0 && m.expires_at))
  },
  async notFound () {
    await assert.rejects(ollama.chat({ model: 'no/such-model', messages: [] }), (error) => error.status_code === 404)
  }
}

for (const [name, check] of Object.entries(checks)) {
  try {
    await check()
    console.log(JSON.stringify({ check: name, ok: true }))
  } catch (error) {
    console.log(JSON.stringify({ check: name, ok: false, error: String(error && error.stack || error) }))
    process.exit(1)
  }
}
