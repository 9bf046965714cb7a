"""The pair prompt, the comparison format and the verdict parser: one module for every judge.

The synthetic judge is pretrained on exactly these texts, and the SAGA trainer uses the same prompt with the real
Qwen3-VL, so a verdict means the same thing everywhere. The paper does not publish its prompt (docs/method.md); this
one asks for an attribute-by-attribute comparison followed by a final verdict line, which is what makes the GRPO
gradient attribute-level: the comparison tokens are conditioned on both images' tokens.

The prompt may name the attributes to compare (a "vocabulary", docs/method.md, "What the paper does not state"):
the paper's stated limitation is that it relies on per-dataset attribute vocabularies. Without one, the prompt asks
for "their attributes" and leaves the choice to the judge.

Parsing is tolerant (case, punctuation, markdown, extra text) and never raises: an answer without a verdict is
``None``, which the reward counts as wrong and the logs count as a parse failure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

PAIR_PROMPT = (
    "Image A and image B each show a {subject}. Compare their attributes one by one, "
    "then decide whether they belong to the same {category}. "
    "Finish with the line 'Answer: same' or 'Answer: different'."
)
# With a vocabulary: the same request, naming the attributes (in the vocabulary's order).
VOCABULARY_PROMPT = (
    "Image A and image B each show a {subject}. Compare these attributes one by one: {attributes}. "
    "Then decide whether they belong to the same {category}. "
    "Finish with the line 'Answer: same' or 'Answer: different'."
)

# Dataset name -> (subject, category) used in the prompt.
SUBJECTS: dict[str, tuple[str, str]] = {
    "cub": ("bird", "species"),
    "synth": ("bird", "species"),
    "inat_aves": ("bird", "species"),
    "cars": ("car", "make, model and year"),
    "aircraft": ("aircraft", "variant"),
    "folder": ("object", "class"),
}

SAME, DIFFERENT = "same", "different"


def pair_prompt(dataset: str = "synth", vocabulary: Sequence[str] | None = None) -> str:
    """The instruction for one pair; `vocabulary`: the attributes it names, in order (None: it names none)."""
    subject, category = SUBJECTS.get(dataset, SUBJECTS["folder"])
    if vocabulary is None:
        return PAIR_PROMPT.format(subject=subject, category=category)
    if not vocabulary:
        raise ValueError("an empty vocabulary names nothing to compare; use None for a prompt without one")
    return VOCABULARY_PROMPT.format(subject=subject, category=category, attributes=", ".join(vocabulary))


def pair_messages(dataset: str = "synth", vocabulary: Sequence[str] | None = None) -> list[dict]:
    """Chat messages for one pair: image A, image B, then the instruction (transformers chat-template format)."""
    return [{"role": "user", "content": [
        {"type": "text", "text": "A:"}, {"type": "image"},
        {"type": "text", "text": "B:"}, {"type": "image"},
        {"type": "text", "text": pair_prompt(dataset, vocabulary)},
    ]}]


def restrict(attributes: Mapping[str, str], vocabulary: Sequence[str] | None) -> dict[str, str]:
    """The attributes a prompt with `vocabulary` asks about, in the vocabulary's order (all of them for None).
    The synthetic judge compares exactly these, so an attribute left out never reaches its answer or reward."""
    if vocabulary is None:
        return dict(attributes)
    return {name: attributes[name] for name in vocabulary if name in attributes}


MATCH, MISMATCH = "match", "mismatch"


def format_comparison(attrs_a: Mapping[str, str], attrs_b: Mapping[str, str], same: bool) -> str:
    """The target answer of the synthetic judge: one line per attribute, then the verdict.

    ``wing: blue / green mismatch`` lists image A's value, then image B's, then whether the two agree. Attribute
    names and values use underscores for spaces so that each stays one word.

    Why the mark: it splits the verdict into two steps that a 2-layer LLM learns quickly, each supervised by its
    own token: "match" / "mismatch" right after value B (compare it with value A two tokens back), then the
    verdict (is there a "mismatch" above?). Without marks the verdict is an OR over ten unmarked equalities, which
    the tiny judge did not learn: it wrote identical lines for 91 % of same-species pairs and differing lines for
    97 % of the others, yet gave one verdict to all. The marks avoid the words same / different, so
    `parse_verdict` never takes a line's mark for the species verdict.
    """
    lines = [f"{name}: {attrs_a[name]} / {attrs_b[name]} {MATCH if attrs_a[name] == attrs_b[name] else MISMATCH}"
             for name in attrs_a]
    lines.append(f"Answer: {SAME if same else DIFFERENT}")
    return "\n".join(lines)


# "name: value_a / value_b", optionally followed by the match / mismatch mark.
_LINE = re.compile(r"^\W*([a-z_]+)\s*:\s*([a-z_]+)\s*/\s*([a-z_]+)\W*(?:(?:mis)?match\W*)?$")


def parse_comparison(text: str) -> dict[str, tuple[str, str]]:
    """Attribute lines of an answer -> {name: (value_a, value_b)}; lines that do not parse are skipped, a mark
    after the values is allowed and ignored."""
    out = {}
    for line in text.lower().splitlines():
        m = _LINE.match(line.strip())
        if m and m.group(1) != "answer":
            out[m.group(1)] = (m.group(2), m.group(3))
    return out


_ANSWER = re.compile(r"answer\W*(same|different|differ|not\s+the\s+same|yes|no)\b")
_NEGATED_SAME = re.compile(r"not\s+(?:the\s+)?same")


def parse_verdict(text: str) -> bool | None:
    """True = same class, False = different, None = no verdict found.

    The last ``Answer: ...`` wins (a model may restate itself). Without that marker, the last line that mentions
    exactly one of same / different decides; 'not the same' reads as different. 'yes' / 'no' after 'Answer'
    answer the question 'same class?'.
    """
    t = text.lower().replace("*", " ")
    found = _ANSWER.findall(t)
    if found:
        word = found[-1]
        return word in (SAME, "yes")
    for line in reversed(t.splitlines()):
        line = _NEGATED_SAME.sub(DIFFERENT, line)
        has_same, has_diff = SAME in line, ("differ" in line)
        if has_same != has_diff:
            return has_same
    return None


def verdict_reward(verdict: bool | None, same: bool) -> float:
    """GRPO reward (docs/method.md): 1 for a correct verdict, 0 for a wrong or missing one."""
    return 1.0 if verdict is not None and verdict == same else 0.0


def values_stated_correctly(text: str, attrs_a: Mapping[str, str], attrs_b: Mapping[str, str]) -> dict[str, int]:
    """Per attribute of the pair: how many of its two values (images A and B) the answer's comparison lines state
    correctly, 0, 1 or 2; a missing line counts as wrong."""
    stated = parse_comparison(text)
    out = {}
    for name in attrs_a:
        got = stated.get(name, (None, None))
        out[name] = int(got[0] == attrs_a[name]) + int(got[1] == attrs_b[name])
    return out


def attribute_reward(text: str, attrs_a: Mapping[str, str], attrs_b: Mapping[str, str]) -> float:
    """Share of the pair's attribute values (each attribute, images A and B) that the answer states correctly.
    An extension, not the paper's reward (`grpo.attribute_reward`): a verdict-only reward lets the encoder make an
    unreliably read attribute look the same on every image (results/synth-cpu-grpo-2000), and this one does not."""
    right = values_stated_correctly(text, attrs_a, attrs_b)
    return sum(right.values()) / max(1, 2 * len(right))
