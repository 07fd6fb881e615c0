"""Drop spans by rule before export: health checks, and successful generations that produced nothing."""

from llamatelemetry.plugins import hookimpl


class DropByRule:
    """Keeps errors and real work; drops the noise."""

    @hookimpl
    def llamatelemetry_export_span(self, span):
        if span.name.startswith("GET /health"):
            span.drop()
        elif span.attributes.get("gen_ai.usage.output_tokens") == 0 and span.status.status_code.name != "ERROR":
            span.drop()
