"""`hobbit chat`: a conversation on the terminal through the model's chat template."""

from __future__ import annotations

from typing import Any, TextIO

from hobbit_py._lib import HobbitError

END_COMMANDS = ("/exit", "/quit")


def chat_loop(model: Any, lines: TextIO, out: TextIO, *, system: str | None = None,
              max_tokens: int = 256, temp: float = 0.0,
              prompt_to: TextIO | None = None) -> list[dict[str, str]]:
    """Read user turns from `lines`, stream each reply to `out`, keep the whole conversation.

    `model` is a llama_cpp.Llama (a hobbit Model): replies come from its
    `create_chat_completion`, so its chat template (or chat format) applies. Blank lines are
    skipped; /exit, /quit or the end of `lines` ends the chat. Returns the messages.
    """
    messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    while True:
        if prompt_to is not None:
            prompt_to.write("> ")
            prompt_to.flush()
        line = lines.readline()
        if not line or line.strip() in END_COMMANDS:
            return messages
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line.rstrip("\n")})
        reply: list[str] = []
        try:
            for chunk in model.create_chat_completion(messages=messages, max_tokens=max_tokens,
                                                      temperature=temp, stream=True):
                piece = chunk["choices"][0]["delta"].get("content")
                if piece:
                    out.write(piece)
                    out.flush()
                    reply.append(piece)
        except ValueError as exc:  # llama-cpp-python's "Requested tokens exceed context window"
            raise HobbitError(f"the conversation no longer fits the context ({exc}); "
                              "raise --ctx-size or start again") from None
        out.write("\n")
        out.flush()
        messages.append({"role": "assistant", "content": "".join(reply)})
