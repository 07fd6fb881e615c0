"""A business metric recorded beside every generation: output tokens per customer plan."""

import llamatelemetry
from llamatelemetry.plugins import hookimpl


class TokensByPlan:
    """Counts output tokens per plan; the counter is created once, when telemetry starts."""

    def __init__(self, plan_of):
        self.plan_of = plan_of
        self.counter = None

    @hookimpl
    def llamatelemetry_telemetry_start(self, settings, tracer_provider, meter_provider):
        meter = meter_provider.get_meter("acme.billing")
        self.counter = meter.create_counter("acme.billing.output_tokens", unit="{token}")

    @hookimpl
    def llamatelemetry_request_end(self, span, request, result, error):
        if result is not None and result.output_tokens is not None and self.counter is not None:
            plan = self.plan_of(request)
            self.counter.add(result.output_tokens, {"acme.plan": plan})
            span.set_attribute("acme.plan", plan)


def current_telemetry():
    """The live telemetry handle (for tests)."""
    return llamatelemetry.current()
