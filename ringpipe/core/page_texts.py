"""The reserved pages' contents (SPEC 1.4, 17): strings in, text out, stdlib only.

- ``index_html``: the page at ``/``, a self-contained file (``static/index.html``, inline CSS and
  JavaScript, no CDN): send a text or a file to a path with a progress bar (``PUT`` with the
  file's Content-Type and a Content-Disposition naming it), receive a path (shown live,
  saved, or downloaded), and watch a path: an ``EventSource`` on ``<path>?format=sse`` that
  appends each event's text as it arrives (LLM tokens) and names the ending.
- ``noscript_html``: ``/noscript``, the same without JavaScript: a GET form picks the path and
  the mode (``?path=``, ``?mode=file|text``), a ``multipart/form-data`` POST form sends. It is
  served with ``noscript_csp(nonce)``, a policy that allows nothing but its one nonce-tagged
  style sheet and forms posting back to this origin.
- ``help_text``: ``/help``, curl usage with the server's own base URL.

The pages link to each other with relative URLs and send to ``./<path>``, so a server
mounted under a path prefix by a reverse proxy keeps working. The index page is read from
the package data once, on first use.
"""

from __future__ import annotations

from functools import cache
from html import escape
from importlib import resources
from typing import Final

from ringpipe import __version__

__all__ = ["MODES", "help_text", "index_html", "noscript_csp", "noscript_html"]

#: ``/noscript?mode=``: what the send form holds; anything else means ``file`` (as the reference).
MODES: Final = ("file", "text")

REPOSITORY: Final = "https://github.com/ringpipe/ringpipe"


@cache
def index_html(version: str = __version__) -> str:
    template = resources.files("ringpipe").joinpath("static/index.html").read_text(encoding="utf-8")
    return template.replace("{{version}}", escape(version))


def noscript_csp(nonce: str) -> str:
    """No script, no fetch, no frame; one inline style sheet; forms post to this origin only."""
    return f"default-src 'none'; style-src 'nonce-{nonce}'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"


def _form_action(path: str) -> str:
    """``./<path>``: relative to the page, never another host (``//evil.example/x``) or scheme."""
    return "./" + path.lstrip("/")


def noscript_html(*, path: str, mode: str, nonce: str, base_url: str, version: str = __version__) -> str:
    """The no-JavaScript page for ``?path=`` (may be empty) and ``?mode=`` (``file`` or ``text``)."""
    checked = {m: (" checked" if m == mode else "") for m in MODES}  # an unknown mode checks neither
    mode = mode if mode in MODES else "file"
    filled = path != ""
    value = escape(path, quote=True)
    disabled = "" if filled else " disabled"
    if mode == "text":
        field = (
            '<label for="input_text">Text</label>\n'
            f'      <textarea id="input_text" name="input_text" rows="10"{disabled}></textarea>'
        )
        step2 = "Type the text"
    else:
        field = (
            '<label for="input_file">File</label>\n'
            f'      <input type="file" id="input_file" name="input_file"{disabled}>'
        )
        step2 = "Choose a file"
    if filled:
        receive_url = escape(f"{base_url}/{path.lstrip('/')}", quote=True)
        after = (
            "<p>This window then shows the server's log. The receiver opens "
            f"<code>{receive_url}</code> (for example <code>curl '{receive_url}'</code>).</p>"
        )
        action = f' action="{escape(_form_action(path), quote=True)}"'
    else:
        after = '<p class="hint">Fill in the path above and apply it first.</p>'
        action = ""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>ringpipe: send without JavaScript</title>
<style nonce="{nonce}">
  body {{ font: 1rem/1.5 system-ui, sans-serif; margin: 0 auto; max-width: 40rem; padding: 1rem; }}
  h1 {{ font-size: 1.5rem; }}
  h2 {{ font-size: 1.15rem; margin: 1.4rem 0 0.4rem; }}
  label {{ display: block; font-weight: 600; margin: 0.4rem 0 0.2rem; }}
  fieldset {{ border: 0; padding: 0; margin: 0.6rem 0; }}
  legend {{ font-weight: 600; }}
  fieldset label {{ display: inline; font-weight: normal; margin-right: 1rem; }}
  input[type=text], textarea {{ width: 100%; font: inherit; padding: 0.4rem; box-sizing: border-box; }}
  input[type=file] {{ width: 100%; font: inherit; }}
  button {{ font: inherit; padding: 0.4rem 1rem; margin-top: 0.6rem; }}
  code {{ overflow-wrap: anywhere; }}
  .hint {{ color: #666; }}
  footer {{ margin-top: 2rem; color: #666; }}
</style>
</head>
<body>
<main>
  <h1>Send without JavaScript</h1>
  <form method="get">
    <h2>Step 1: the path and what to send</h2>
    <label for="path">Path</label>
    <input type="text" id="path" name="path" value="{value}" placeholder="e.g. abc123 or photo.png" required
           autocomplete="off" autocapitalize="off" spellcheck="false">
    <fieldset>
      <legend>Send</legend>
      <label><input type="radio" name="mode" value="file"{checked["file"]}> a file</label>
      <label><input type="radio" name="mode" value="text"{checked["text"]}> a text</label>
    </fieldset>
    <button type="submit">Apply</button>
  </form>
  <form method="post"{action} enctype="multipart/form-data">
    <h2>Step 2: {step2}</h2>
      {field}
    <h2>Step 3: Send</h2>
    <button type="submit"{disabled}>Send</button>
    {after}
  </form>
</main>
<footer>
  ringpipe {escape(version)} · <a href=".">Top page</a> · <a href="help">Command-line usage</a>
</footer>
</body>
</html>
"""


def help_text(url: str, version: str = __version__) -> str:
    """``/help``: the reference's curl recipes with this server's base URL, then ringpipe's own."""
    return f"""Help for ringpipe {version}
(Repository: {REPOSITORY})

======= Get  =======
curl {url}/mypath

======= Send =======
# Send a file
curl -T myfile {url}/mypath

# Send a text
echo 'hello!' | curl -T - {url}/mypath

# Send a directory (zip)
zip -q -r - ./mydir | curl -T - {url}/mypath

# Send a directory (tar.gz)
tar zfcp - ./mydir | curl -T - {url}/mypath

# Encryption
## Send
cat myfile | openssl aes-256-cbc | curl -T - {url}/mypath
## Get
curl {url}/mypath | openssl aes-256-cbc -d

======= Many receivers =======
curl -T myfile '{url}/mypath?n=3'   # and three times: curl '{url}/mypath?n=3'

======= Web browsers =======
{url}/           send a text or a file, receive a path
{url}/noscript   send without JavaScript

======= Reference =======
You can use any path, e.g. /mypath, /mypath123, /mydir/mypath
Whoever comes first waits; bytes flow live with backpressure; nothing is stored.
"""
