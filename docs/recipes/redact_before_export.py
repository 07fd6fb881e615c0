"""Remove or mask attributes before any span leaves the process."""

import re

from llamatelemetry.plugins import hookimpl

EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")


class RedactBeforeExport:
    """Drops the user's e-mail attribute and masks e-mail addresses in captured prompts."""

    @hookimpl
    def llamatelemetry_export_span(self, span):
        span.attributes.pop("app.user.email", None)
        for key in ("gen_ai.input.messages", "gen_ai.output.messages"):
            if isinstance(span.attributes.get(key), str):
                span.attributes[key] = EMAIL.sub("<email>", span.attributes[key])
