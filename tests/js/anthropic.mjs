// The official Anthropic JavaScript SDK against ollama-proxy's /v1/messages: one streamed
// tool round trip. Usage: ANTHROPIC_BASE_URL=http://127.0.0.1:PORT node anthropic.mjs
// Prints one JSON line per check; exits non-zero on the first failure.
import assert from 'node:assert/strict'
import Anthropic from '@anthropic-ai/sdk'

const baseURL = process.env.ANTHROPIC_BASE_URL
assert.ok(baseURL, 'set ANTHROPIC_BASE_URL')
const client = new Anthropic({ baseURL, apiKey: 'ollama', maxRetries: 0 })
const MODEL = 'openai/gpt-4o-mini'
const tools = [{
  name: 'lookup',
  description: 'Look a thing up',
  input_schema: { type: 'object', properties: { query: { type: 'string' } }, required: ['query'] }
}]
const question = { role: 'user', content: 'call lookup {"query": "cats"}' }

const checks = {
  async streamedToolUse () {
    const stream = client.messages.stream({ model: MODEL, max_tokens: 100, tools, messages: [question] })
    const kinds = []
    stream.on('streamEvent', (event) => kinds.push(event.type))
    const first = await stream.finalMessage()
    assert.equal(kinds[0], 'message_start')
    assert.equal(kinds.at(-1), 'message_stop')
    assert.equal(first.stop_reason, 'tool_use')
    const use = first.content.find((b) => b.type === 'tool_use')
    assert.deepEqual(use.input, { query: 'cats' })
    const second = client.messages.stream({
      model: MODEL,
      max_tokens: 100,
      tools,
      messages: [
        question,
        { role: 'assistant', content: first.content },
        { role: 'user', content: [{ type: 'tool_result', tool_use_id: use.id, content: 'three cats' }] }
      ]
    })
    let text = ''
    second.on('text', (delta) => { text += delta })
    const answer = await second.finalMessage()
    assert.equal(text, 'Tool said: three cats')
    assert.equal(answer.stop_reason, 'end_turn')
  },
  async notFound () {
    await assert.rejects(
      client.messages.create({ model: 'no/such-model', max_tokens: 5, messages: [question] }),
      (error) => error.status === 404 && error.error.error.type === 'not_found_error'
    )
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
