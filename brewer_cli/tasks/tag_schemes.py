"""NER tagging schemes: which one a split's tags follow, and their conversion to IOB2.

- IOB1 (the original CoNLL-2003 files): an entity starts with `I-`; `B-` only begins an entity
  that directly follows another of the same type.
- IOB2: every entity starts with `B-`, its other words are `I-`.
- BIOES (IOBES): `B-` first, `I-` inside, `E-` last word of an entity; `S-` a one-word entity.

Conversion reads the tags the way conlleval does (seqeval's default mode implements the same
rules, `get_entities`): a chunk starts at `B-`/`S-`, at `I-`/`E-` after `O`, `E-` or `S-`, and
at any tag whose type differs from the previous one; it ends before `B-`, `S-`, `O` or another
type, and after `E-`/`S-`. Each chunk is then written as `B-TYPE I-TYPE …`. A well-formed IOB2
sequence comes back unchanged, so the number of changed tags is the conversion count; and the
strict IOB2 entities of the converted sequence are exactly conlleval's chunks of the original,
so a strict IOB2 score of converted tags equals conlleval's score of the original tags.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

OUTSIDE = "O"
IOB1, IOB2, BIOES, MIXED = "IOB1", "IOB2", "BIOES", "IOB1/IOB2 mixed"
ENTITY_PREFIXES = ("B-", "I-", "E-", "S-")


@dataclass
class TagConversion:
    """A split's tags in IOB2, the scheme they were given in, and how many tags changed."""

    scheme: str
    tags: list[list[str]]
    converted: int

    def report(self) -> dict[str, object]:
        return {"scheme": self.scheme, "converted_tags": self.converted}

    def describe(self) -> str:
        if self.scheme == IOB2:
            return "IOB2"
        return f"{self.scheme}, {self.converted:,} tags converted to IOB2"


def is_entity_tag(tag: str) -> bool:
    """`O` or a prefix of one of the schemes followed by a type (`B-PER`, `S-LOC`, …)."""
    return tag == OUTSIDE or (tag[:2] in ENTITY_PREFIXES and len(tag) > 2)


def to_iob2(tags: Sequence[str]) -> list[str]:
    """One sentence's entity tags (any scheme, well-formed or not) read as conlleval reads them and
    written in IOB2."""
    converted = [OUTSIDE] * len(tags)
    # Imported on use: seqeval pulls in scikit-learn (about 90 MiB), which only tagging tasks need.
    from seqeval.metrics.sequence_labeling import get_entities

    for entity_type, start, end in get_entities(list(tags)):
        converted[start] = f"B-{entity_type}"
        converted[start + 1 : end + 1] = [f"I-{entity_type}"] * (end - start)
    return converted


def convert_to_iob2(tag_sequences: Sequence[Sequence[str]]) -> TagConversion | None:
    """The sentences' tags in IOB2 and the scheme they came in; None when some tag is not an entity
    tag (POS tags, chunk tags without a scheme prefix): those are left as they are."""
    if not all(is_entity_tag(tag) for tags in tag_sequences for tag in tags):
        return None
    converted = [to_iob2(tags) for tags in tag_sequences]
    changed = sum(old != new for tags, new_tags in zip(tag_sequences, converted) for old, new in zip(tags, new_tags))
    return TagConversion(scheme_of(tag_sequences), converted, changed)


def scheme_of(tag_sequences: Sequence[Sequence[str]]) -> str:
    """BIOES when an `E-` or `S-` tag occurs; else IOB1 when some entity starts with `I-` and every
    `B-` follows an entity of its type (IOB1's only use of `B-`); IOB2 when no entity starts with
    `I-`; otherwise both kinds of start occur (mixed)."""
    if any(tag[:2] in ("E-", "S-") for tags in tag_sequences for tag in tags):
        return BIOES
    inside_starts = lone_begins = 0
    for tags in tag_sequences:
        previous = OUTSIDE
        for tag in tags:
            follows_same_type = previous != OUTSIDE and previous[2:] == tag[2:]
            if tag.startswith("I-") and not follows_same_type:
                inside_starts += 1
            elif tag.startswith("B-") and not follows_same_type:
                lone_begins += 1
            previous = tag
    if not inside_starts:
        return IOB2
    return MIXED if lone_begins else IOB1


def iob2_tag_list(names: Sequence[str], used: Sequence[Sequence[str]]) -> list[str]:
    """A tag list (a hub dataset's class names) in IOB2: `S-X` read as `B-X`, `E-X` as `I-X`, in
    the list's order without repeats, then any tag the converted data uses that is still missing
    (IOB1 lists lack `B-X` for types that never follow themselves)."""
    renamed = {"S-": "B-", "E-": "I-"}
    result = list(dict.fromkeys(renamed.get(name[:2], name[:2]) + name[2:] if name != OUTSIDE else name for name in names))
    missing = sorted({tag for tags in used for tag in tags} - set(result))
    return result + missing
