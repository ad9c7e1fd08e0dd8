"""The reserved pages' texts (``ringpipe.webpages``): what a browser or curl user relies on."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from ringpipe import __version__
from ringpipe.core.page_texts import help_text, index_html, noscript_csp, noscript_html


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def find(self, tag: str, **want: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag and all(a.get(k) == v for k, v in want.items())]


def parse(html: str) -> Tags:
    tags = Tags()
    tags.feed(html)
    return tags


def noscript(path: str = "abc", mode: str = "file") -> Tags:
    return parse(noscript_html(path=path, mode=mode, nonce="Tk9OQ0U=", base_url="http://h"))


def test_index_is_self_contained_and_phone_sized() -> None:
    page = index_html()
    tags = parse(page)
    assert __version__ in page and "{{" not in page
    assert tags.find("meta", name="viewport")
    assert not [a for t, a in tags.tags if t in ("script", "img", "iframe") and a.get("src")]
    assert not tags.find("link")  # no style sheet from anywhere
    assert not re.search(r"(src|href)=\"(https?:)?//", page)


def test_index_labels_every_field() -> None:
    tags = parse(index_html())
    labelled = {a["for"] for a in tags.find("label") if a.get("for")}
    fields = [a for t, a in tags.tags if t in ("input", "textarea") and a.get("type") != "radio"]
    assert fields and all(f.get("id") in labelled for f in fields)
    assert tags.find("progress", id="send-progress")[0].get("aria-label")


def test_noscript_text_mode_posts_multipart_to_the_path() -> None:
    tags = noscript("my/file.txt?n=2", "text")
    (form,) = tags.find("form", method="post")
    assert form["action"] == "./my/file.txt?n=2" and form["enctype"] == "multipart/form-data"
    assert tags.find("textarea", name="input_text") and not tags.find("input", type="file")
    assert "checked" in tags.find("input", type="radio", name="mode", value="text")[0]
    assert "checked" not in tags.find("input", type="radio", name="mode", value="file")[0]


@pytest.mark.parametrize("mode", ["file", "zip", ""])
def test_noscript_file_mode_is_the_default(mode: str) -> None:
    tags = noscript(mode=mode)
    assert tags.find("input", type="file", name="input_file") and not tags.find("textarea")
    checked = [a["value"] for a in tags.find("input", type="radio") if "checked" in a]
    assert checked == (["file"] if mode == "file" else [])  # as the reference: unknown modes check nothing


def test_noscript_without_a_path_cannot_send() -> None:
    tags = noscript(path="")
    (form,) = tags.find("form", method="post")
    assert "action" not in form
    assert "disabled" in tags.find("input", type="file")[0]
    apply, send = tags.find("button", type="submit")
    assert "disabled" not in apply and "disabled" in send


@pytest.mark.parametrize("path", ["//evil.example/x", "javascript:alert(1)", "/abs", "https://evil.example/"])
def test_noscript_form_never_posts_elsewhere(path: str) -> None:
    (form,) = noscript(path=path).find("form", method="post")
    assert form["action"] is not None and form["action"].startswith("./")
    assert not form["action"].startswith(".//")


def test_noscript_escapes_the_path() -> None:
    evil = "\"><script>alert(1)</script><x y='"
    page = noscript_html(path=evil, mode="text", nonce="Tk9OQ0U=", base_url="http://h")
    tags = parse(page)
    assert not tags.find("script")
    assert tags.find("input", name="path")[0]["value"] == evil


def test_noscript_style_carries_the_nonce_and_the_policy_allows_nothing_else() -> None:
    tags = noscript()
    assert tags.find("style")[0]["nonce"] == "Tk9OQ0U="
    policy = noscript_csp("Tk9OQ0U=")
    assert policy.startswith("default-src 'none'; style-src 'nonce-Tk9OQ0U='")
    assert "form-action 'self'" in policy and "script-src" not in policy


def test_help_uses_the_base_url() -> None:
    text = help_text("https://pipe.example:8443")
    assert text.startswith(f"Help for ringpipe {__version__}\n")
    assert "curl https://pipe.example:8443/mypath\n" in text
    assert "curl -T myfile https://pipe.example:8443/mypath\n" in text
