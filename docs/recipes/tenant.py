from llamatelemetry.plugins import hookimpl

class Tenant:
    @hookimpl
    def llamatelemetry_request_start(self, span, request):
        span.set_attribute("app.tenant", "acme")
