"""Words of a text, for the language the session speaks.

A :class:`TextAnalyzer` turns text into index terms: Unicode words (letters, combining marks and digits, so Urdu,
Hindi and Greek words stay whole and accented words are not cut), case-folded after NFKC normalisation, without
the language's stop words, stemmed by Snowball. The stop words come from the ``stopwords`` package (42 languages;
its English list is Snowball's 175 function words), the stemmers from PyStemmer (Snowball's C stemmers). A language Snowball cannot stem (Urdu, say) keeps its words as they are. Outside English the English
stop words are removed as well, because the memory extractor may write English whatever the session's language.

Pure: no I/O but reading the packages' files once per language.
"""

from __future__ import annotations

import functools
import unicodedata
from dataclasses import dataclass

import regex
import Stemmer
import stopwords

# A word starts with a letter or digit and goes on through letters, marks and digits; an inner apostrophe keeps
# "i'm" and "sister's" whole, so the stop list and the stemmer see them as written.
_WORD = regex.compile(r"[\p{L}\p{N}][\p{L}\p{M}\p{N}]*(?:'[\p{L}\p{M}]+)*")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u02bc": "'", "\u2018": "'"})

# ISO 639-1 code -> Snowball algorithm (PyStemmer's names). Languages not here are not stemmed.
SNOWBALL = {
    "ar": "arabic", "hy": "armenian", "eu": "basque", "ca": "catalan", "cs": "czech", "da": "danish",
    "nl": "dutch", "en": "english", "eo": "esperanto", "et": "estonian", "fi": "finnish", "fr": "french",
    "de": "german", "el": "greek", "hi": "hindi", "hu": "hungarian", "id": "indonesian", "ga": "irish",
    "it": "italian", "lt": "lithuanian", "ne": "nepali", "no": "norwegian", "nb": "norwegian", "nn": "norwegian",
    "fa": "persian", "pl": "polish", "pt": "portuguese", "ro": "romanian", "ru": "russian", "sr": "serbian",
    "st": "sesotho", "es": "spanish", "sv": "swedish", "ta": "tamil", "tr": "turkish", "yi": "yiddish",
}  # fmt: skip


def base_language(language: str) -> str:
    """``"pt-BR"`` -> ``"pt"``."""
    return language.split("-", 1)[0].split("_", 1)[0].lower()


@dataclass(frozen=True, slots=True)
class TextAnalyzer:
    """Index terms of a text in one language. Build it with :func:`analyzer_for`."""

    language: str  # ISO 639-1, e.g. "en"
    stop_words: frozenset[str]
    stemmer: Stemmer.Stemmer | None

    @property
    def english(self) -> bool:
        """English-only rules (time phrases, words that point back) apply only when this is true."""
        return self.language == "en"

    def words(self, text: str) -> list[str]:
        """Every word, normalised and case-folded, stop words included."""
        return _WORD.findall(unicodedata.normalize("NFKC", text).translate(_APOSTROPHES).casefold())

    def terms(self, text: str) -> list[str]:
        """The index terms: words without stop words, stemmed, in order, repeats kept (BM25 counts them)."""
        kept = [w for w in self.words(text) if w not in self.stop_words]
        return self.stemmer.stemWords(kept) if self.stemmer is not None else kept


@functools.lru_cache(maxsize=32)
def analyzer_for(language: str) -> TextAnalyzer:
    """The analyzer for a language code such as ``en``, ``pt-BR`` or ``ur``; unknown languages get words only."""
    base = base_language(language)
    stop = set(stopwords.safe_get_stopwords(language)) | set(stopwords.safe_get_stopwords(base))  # pt-BR and pt
    if base != "en":
        stop |= set(stopwords.safe_get_stopwords("en"))
    folded = frozenset(unicodedata.normalize("NFKC", w).translate(_APOSTROPHES).casefold() for w in stop)
    algorithm = SNOWBALL.get(base)
    return TextAnalyzer(
        language=base,
        stop_words=folded,
        stemmer=Stemmer.Stemmer(algorithm) if algorithm is not None else None,
    )
