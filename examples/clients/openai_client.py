"""Calling Looper with the official OpenAI Python client (after `make run`)."""

import openai

client = openai.OpenAI(base_url="http://127.0.0.1:10000/v1", api_key="not-needed-locally")

reply = client.chat.completions.create(
    model="vllm-sr/auto",
    messages=[{"role": "user", "content": "Say hello"}],
)
print(reply.choices[0].message.content, reply.usage)

# `with_raw_response` exposes the x-looper-* headers (recipe, calls, models, cost).
raw = client.chat.completions.with_raw_response.create(
    model="vllm-sr/auto",
    messages=[{"role": "user", "content": "Which models answered?"}],
)
print({k: v for k, v in raw.headers.items() if k.startswith("x-looper-")})

for chunk in client.chat.completions.create(
    model="vllm-sr/auto",
    messages=[{"role": "user", "content": "Stream a greeting"}],
    stream=True,
    stream_options={"include_usage": True},
):
    for choice in chunk.choices:
        print(choice.delta.content or "", end="", flush=True)
    if chunk.usage:
        print("\nusage:", chunk.usage)
