//! Server-sent events in the OpenAI streaming format: a cached completion replayed as chunks,
//! and a streamed upstream answer assembled back into one completion for the cache.

use serde_json::{Value, json};

/// A stored `chat.completion` as `chat.completion.chunk` events, ending with `[DONE]`.
pub fn replay(completion: &Value, include_usage: bool) -> Vec<String> {
    let id = completion.get("id").cloned().unwrap_or(Value::Null);
    let created = completion.get("created").cloned().unwrap_or(Value::Null);
    let model = completion.get("model").cloned().unwrap_or(Value::Null);
    let chunk = |choices: Value| json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices});
    let mut events = Vec::new();
    let choices = completion.get("choices").and_then(Value::as_array).cloned().unwrap_or_default();
    for (i, choice) in choices.iter().enumerate() {
        let index = choice.get("index").cloned().unwrap_or(json!(i));
        let message = choice.get("message").cloned().unwrap_or(json!({}));
        let role = message.get("role").cloned().unwrap_or(json!("assistant"));
        events.push(chunk(json!([{"index": index, "delta": {"role": role, "content": ""}, "finish_reason": null}])));
        let content = message.get("content").and_then(Value::as_str).unwrap_or_default();
        let chars: Vec<char> = content.chars().collect();
        for piece in chars.chunks(24) {
            let text: String = piece.iter().collect();
            events.push(chunk(json!([{"index": index, "delta": {"content": text}, "finish_reason": null}])));
        }
        if let Some(tools) = message.get("tool_calls") {
            events.push(chunk(json!([{"index": index, "delta": {"tool_calls": tools}, "finish_reason": null}])));
        }
        let finish = choice.get("finish_reason").cloned().unwrap_or(json!("stop"));
        events.push(chunk(json!([{"index": index, "delta": {}, "finish_reason": finish}])));
    }
    if include_usage && let Some(usage) = completion.get("usage") {
        let mut last = chunk(json!([]));
        last["usage"] = usage.clone();
        events.push(last);
    }
    let mut out: Vec<String> = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    out.push("data: [DONE]\n\n".to_owned());
    out
}

/// Accumulates a streamed answer (choice 0) from its SSE bytes.
#[derive(Debug, Default)]
pub struct Assembler {
    buf: Vec<u8>,
    id: Option<Value>,
    created: Option<Value>,
    model: Option<Value>,
    role: Option<Value>,
    content: String,
    tool_calls: Option<Value>,
    finish: Option<Value>,
    usage: Option<Value>,
    done: bool,
    /// Something we cannot faithfully rebuild (several choices, malformed events).
    unsupported: bool,
}

impl Assembler {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        while let Some(pos) = self.buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = self.buf.drain(..pos + 2).collect();
            let text = String::from_utf8_lossy(&event);
            for line in text.lines() {
                let Some(data) = line.strip_prefix("data:") else { continue };
                self.data(data.trim());
            }
        }
    }

    fn data(&mut self, data: &str) {
        if data == "[DONE]" {
            self.done = true;
            return;
        }
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            self.unsupported = true;
            return;
        };
        self.id.get_or_insert_with(|| v.get("id").cloned().unwrap_or(Value::Null));
        self.created.get_or_insert_with(|| v.get("created").cloned().unwrap_or(Value::Null));
        self.model.get_or_insert_with(|| v.get("model").cloned().unwrap_or(Value::Null));
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
            self.usage = Some(u.clone());
        }
        for c in v.get("choices").and_then(Value::as_array).into_iter().flatten() {
            if c.get("index").and_then(Value::as_u64).unwrap_or(0) != 0 {
                self.unsupported = true;
                continue;
            }
            let delta = c.get("delta").cloned().unwrap_or(Value::Null);
            if let Some(r) = delta.get("role").filter(|r| !r.is_null()) {
                self.role = Some(r.clone());
            }
            if let Some(t) = delta.get("content").and_then(Value::as_str) {
                self.content.push_str(t);
            }
            if let Some(t) = delta.get("tool_calls").filter(|t| !t.is_null()) {
                // Streamed tool calls arrive in fragments we do not reassemble.
                self.tool_calls = Some(t.clone());
                self.unsupported = true;
            }
            if let Some(f) = c.get("finish_reason").filter(|f| !f.is_null()) {
                self.finish = Some(f.clone());
            }
        }
    }

    /// The assembled completion, if the stream finished cleanly and can be cached.
    pub fn finish(self) -> Option<Value> {
        if !self.done || self.unsupported || self.finish.is_none() {
            return None;
        }
        let _ = self.tool_calls;
        Some(json!({
            "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "message": {"role": self.role.unwrap_or(json!("assistant")), "content": self.content},
                         "finish_reason": self.finish}],
            "usage": self.usage,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_then_assemble_is_the_identity() {
        let completion = json!({"id": "c1", "object": "chat.completion", "created": 7, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris is the capital of France, of course."}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 8, "total_tokens": 17}});
        let events = replay(&completion, true);
        assert!(events.len() > 3);
        let mut a = Assembler::default();
        // Arbitrary splits of the byte stream.
        let all: String = events.concat();
        for piece in all.as_bytes().chunks(7) {
            a.push(piece);
        }
        assert_eq!(a.finish(), Some(completion));
    }

    #[test]
    fn incomplete_streams_are_not_cached() {
        let mut a = Assembler::default();
        a.push(b"data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":null}]}\n\n");
        assert_eq!(a.finish(), None);
    }
}
