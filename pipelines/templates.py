"""Prompt templates: turn (instruction, context) into the exact text given to the tokenizer.

Built-in names:
- ``dolly``: the Dolly-v2 instruction format, as Dolly's generation pipeline builds it (with an
  ``Input:`` block when there is context), ending after ``### Response:\\n``.
- ``chat``: the tokenizer's own chat template (``apply_chat_template`` with a generation prompt);
  context is appended to the user turn after a blank line.
- ``redpajama``: RedPajama-INCITE-Chat's ``<human>: ...\\n<bot>:`` turns.
- ``plain``: the instruction, then the context after a blank line.
- ``auto``: ``chat`` when the tokenizer has a chat template, else ``dolly``.
Anything else containing ``{instruction}`` is a user template (``str.format`` with
``instruction`` and ``context``; ``{context_block}`` expands to ``"\\n\\n" + context`` or "").
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llm_maps.errors import LLMMapsError

DOLLY_INTRO = ("Below is an instruction that describes a task. Write a response that "
               "appropriately completes the request.")
DOLLY_INSTRUCTION_KEY = "### Instruction:"
DOLLY_INPUT_KEY = "Input:"
DOLLY_RESPONSE_KEY = "### Response:"
DOLLY_END_KEY = "### End"

BUILTIN = ("auto", "dolly", "chat", "redpajama", "plain")


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    template: str | None = None  # for user templates
    chat_template: str | None = None  # the tokenizer's, recorded for provenance
    stop_strings: tuple[str, ...] = field(default_factory=tuple)

    def render(self, instruction: str, context: str | None = "", *, tokenizer=None) -> str:
        context = (context or "").strip()
        instruction = instruction.strip()
        if self.name == "dolly":
            if context:
                return (f"{DOLLY_INTRO}\n\n{DOLLY_INSTRUCTION_KEY}\n{instruction}\n\n"
                        f"{DOLLY_INPUT_KEY}\n{context}\n\n{DOLLY_RESPONSE_KEY}\n")
            return f"{DOLLY_INTRO}\n\n{DOLLY_INSTRUCTION_KEY}\n{instruction}\n\n{DOLLY_RESPONSE_KEY}\n"
        if self.name == "redpajama":
            user = f"{instruction}\n\n{context}" if context else instruction
            return f"<human>: {user}\n<bot>:"
        if self.name == "plain":
            return f"{instruction}\n\n{context}" if context else instruction
        if self.name == "chat":
            if tokenizer is None:
                raise LLMMapsError("template 'chat' needs the model's tokenizer")
            user = f"{instruction}\n\n{context}" if context else instruction
            return tokenizer.apply_chat_template([{"role": "user", "content": user}],
                                                 tokenize=False, add_generation_prompt=True)
        assert self.template is not None
        return self.template.format(instruction=instruction, context=context,
                                    context_block=f"\n\n{context}" if context else "")

    def render_with_demonstrations(self, demos, instruction: str, context: str | None = "", *,
                                   tokenizer=None) -> str:
        """The prompt of (instruction, context) preceded by demonstrations, each an (instruction,
        context, reference) rendered in this template's format and answered by its reference:
        ``chat``: user/assistant turns of the tokenizer's chat template; ``dolly``: each block's
        response then ``### End``; ``redpajama``: ``<human>:``/``<bot>:`` turns; ``plain``: each
        prompt, a blank line, its reference, a blank line; user templates: each rendered prompt
        directly followed by its reference and a blank line. Instructions and contexts
        are used verbatim (as ``render`` uses them)."""
        demos = list(demos)
        if self.name == "chat":
            if tokenizer is None:
                raise LLMMapsError("template 'chat' needs the model's tokenizer")
            messages = []
            for d_instr, d_ctx, d_ref in demos:
                d_ctx = (d_ctx or "").strip()
                user = f"{d_instr.strip()}\n\n{d_ctx}" if d_ctx else d_instr.strip()
                messages += [{"role": "user", "content": user}, {"role": "assistant", "content": str(d_ref).strip()}]
            context = (context or "").strip()
            user = f"{instruction.strip()}\n\n{context}" if context else instruction.strip()
            messages.append({"role": "user", "content": user})
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if self.name == "dolly":
            shots = "".join(f"{self.render(i, c)}{str(r).strip()}\n\n{DOLLY_END_KEY}\n\n" for i, c, r in demos)
        elif self.name == "redpajama":
            shots = "".join(f"{self.render(i, c)} {str(r).strip()}\n" for i, c, r in demos)
        else:  # plain: the answer after a blank line; a user template ends where the answer starts
            gap = "\n\n" if self.name == "plain" else ""
            shots = "".join(f"{self.render(i, c)}{gap}{str(r).strip()}\n\n" for i, c, r in demos)
        return shots + self.render(instruction, context, tokenizer=tokenizer)

    def describe(self) -> dict:
        out = {"name": self.name, "stop_strings": list(self.stop_strings)}
        if self.template is not None:
            out["template"] = self.template
        if self.chat_template is not None:
            out["chat_template"] = self.chat_template
        return out

    @classmethod
    def from_manifest(cls, spec: dict) -> "PromptTemplate":
        return cls(name=spec["name"], template=spec.get("template"),
                   chat_template=spec.get("chat_template"),
                   stop_strings=tuple(spec.get("stop_strings", ())))


def get_template(spec: str, tokenizer=None) -> PromptTemplate:
    """Resolve a template name or a user template string (``{instruction}`` required)."""
    spec = spec or "auto"
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    eos = getattr(tokenizer, "eos_token", None)
    if spec == "auto":
        spec = "chat" if has_chat else "dolly"
    if spec == "dolly":
        return PromptTemplate("dolly", stop_strings=(DOLLY_END_KEY,))
    if spec == "chat":
        if tokenizer is not None and not has_chat:
            raise LLMMapsError("--template chat: this tokenizer has no chat template "
                               "(use dolly, redpajama, plain or a template string)")
        stops = tuple(s for s in ("<|im_end|>", "<|eot_id|>", "<|end|>") if tokenizer is not None
                      and s in (tokenizer.chat_template or ""))
        return PromptTemplate("chat", chat_template=getattr(tokenizer, "chat_template", None),
                              stop_strings=stops)
    if spec == "redpajama":
        return PromptTemplate("redpajama", stop_strings=("<human>:",))
    if spec == "plain":
        return PromptTemplate("plain", stop_strings=())
    if "{instruction}" not in spec:
        raise LLMMapsError(f"--template: '{spec}' is neither a known template ({', '.join(BUILTIN)}) "
                           "nor a template string containing {instruction}")
    try:
        spec.format(instruction="", context="", context_block="")
    except (KeyError, IndexError, ValueError) as exc:
        raise LLMMapsError(f"--template: bad template string ({type(exc).__name__}: {exc}); "
                           "use {instruction}, {context}, {context_block}, and {{ }} for braces") from None
    return PromptTemplate("custom", template=spec, stop_strings=(eos,) if eos else ())
