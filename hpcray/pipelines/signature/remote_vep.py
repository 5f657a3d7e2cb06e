"""A VEP-REST-compatible annotation server (Ensembl's REST API, or a site's own mirror)
as a remote endpoint of an annotation service: `POST /vep/<species>/region` in batches,
its reply mapped into the same annotation table the local annotators write.

The VCF is read, and the table written, in the process that calls (both on the shared
filesystem); only the variants travel.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hpcray.remote import (
    RemoteEndpoint,
    RemoteResult,
    RemoteServerError,
    RemoteTimeout,
)

BATCH = 200  # Ensembl's limit per POST /vep/:species/region
RATE_LIMIT_RETRIES = 5


class VepRestEndpoint(RemoteEndpoint):
    kind = "vep_rest"
    methods = ("annotate",)
    probe_path = "/info/ping"
    end_of_stream = "the end"

    def body(self, method: str, payload: Any) -> tuple[str, dict[str, Any]]:
        if method != "annotate":
            raise self.unsupported(method)
        return f"/vep/{self.model}/region", {"variants": payload}

    def stream_event(self, method: str, line: str):
        raise self.unsupported(method)

    def served_models(self, data: Any) -> list[str]:
        if not isinstance(data, dict) or "ping" not in data:
            raise TypeError("not a ping reply")
        return [self.model] if data.get("ping") else []

    def _post_list(self, variants: list[str]) -> list[dict[str, Any]]:
        """One batch; HTTP 429 (rate limit) waits for Retry-After and tries again."""
        path, body = self.body("annotate", variants)
        for attempt in range(RATE_LIMIT_RETRIES + 1):
            reply = self._send(path, body)
            if reply.status_code == 429 and attempt < RATE_LIMIT_RETRIES:
                time.sleep(min(float(reply.headers.get("Retry-After", "1") or 1), 30.0))
                continue
            self.check(reply)
            try:
                data = reply.json()
            except ValueError:
                raise self.malformed("reply (not JSON)", reply.text) from None
            if not isinstance(data, list):
                raise self.malformed("reply (not a list of results)", reply.text)
            return data
        raise RemoteServerError(f"{self.where}: still rate-limited (HTTP 429) after "
                                f"{RATE_LIMIT_RETRIES} waits")

    def _send(self, path: str, body: dict[str, Any]):
        import httpx

        from hpcray.remote import RemoteUnavailable

        try:
            return self.client.post(path, json=body, headers={"Accept": "application/json"})
        except httpx.TimeoutException:
            raise RemoteTimeout(f"{self.where}: timed out waiting for a reply") from None
        except httpx.TransportError as exc:
            raise RemoteUnavailable(f"{self.where}: {type(exc).__name__}: {exc}") from None

    def call(self, method: str, payload: Any, timeout: float | None = None,
             request_id: str | None = None) -> RemoteResult:
        """`annotate` with the annotation service's payload ({vcf, sample, column, out}):
        writes the table at `out`, returns the same summary a local annotator returns. One
        call is many batches: `request_id` is not sent (VEP-REST has no use for it)."""
        from hpcray.pipelines.signature.service import annotate_with

        if method != "annotate":
            raise self.unsupported(method)
        start = time.perf_counter()
        summary = annotate_with(RestAnnotator(self), payload)
        rtt = time.perf_counter() - start
        return RemoteResult(summary, rtt, 0.0, rtt, server_reported=True)


class RestAnnotator:
    """The annotator interface (`annotate(vcf, sample, column)`) over a VEP REST endpoint."""

    def __init__(self, endpoint: VepRestEndpoint, batch: int = BATCH) -> None:
        self.endpoint, self.batch = endpoint, batch
        self.name = f"vep_rest:{endpoint.name}"

    def annotate(self, vcf: str | Path, sample: str, column: str | None = None):
        from hpcray.pipelines.signature.builtin import Summary
        from hpcray.pipelines.signature.consequences import IMPACT, most_severe
        from hpcray.pipelines.signature.table import Row, inside_gene
        from hpcray.pipelines.signature.vcf import Call, calls

        genes: set[str] = set()  # summary.genes; a local stays typed as a set inside rows()
        summary = Summary(genes=genes)
        started = time.perf_counter()

        def rows() -> Iterator[Row]:
            pending: list[Call] = []

            def flush() -> Iterator[Row]:
                lines = [f"{c.contig} {c.pos} . {c.ref} {','.join(c.alts)} . . ." for c in pending]
                results = self.endpoint._post_list(lines)
                by_input = {r.get("input"): r for r in results if isinstance(r, dict)}
                for call, line in zip(pending, lines, strict=True):
                    result = by_input.get(line)
                    if result is None:
                        raise self.endpoint.malformed(f"reply: no result for {line!r} in",
                                                      str(list(by_input))[:200])
                    for alt in call.alts:
                        for tc in _consequences_for(result, alt, call.ref, call.alts):
                            terms = [t for t in tc.get("consequence_terms", []) if t]
                            top = most_severe({t for t in terms if t in IMPACT})
                            gene = tc.get("gene_symbol") or ""
                            if inside_gene(gene, top):
                                genes.add(gene)
                            summary.rows += 1
                            yield Row(sample, call.contig, call.pos, call.ref, alt, gene,
                                      tc.get("gene_id") or "", tc.get("transcript_id") or "",
                                      "&".join(terms), tc.get("impact") or IMPACT.get(top, ""))
                pending.clear()

            for call in calls(vcf, column):
                summary.variants += 1
                pending.append(call)
                if len(pending) >= self.batch:
                    yield from flush()
            if pending:
                yield from flush()
            summary.seconds = time.perf_counter() - started
        return rows(), summary


def _consequences_for(result: dict[str, Any], alt: str, ref: str,
                      alts: tuple[str, ...]) -> list[dict[str, Any]]:
    from hpcray.pipelines.signature.vep import vep_allele

    mine = {alt, vep_allele(ref, alts, alt)}
    found = [tc for tc in result.get("transcript_consequences") or []
             if tc.get("variant_allele") in mine or "variant_allele" not in tc]
    if found:
        return found
    return [{"consequence_terms": ic.get("consequence_terms", ["intergenic_variant"]),
             "impact": ic.get("impact", "MODIFIER")}
            for ic in result.get("intergenic_consequences") or []
            if ic.get("variant_allele") in mine or "variant_allele" not in ic] or [
        {"consequence_terms": [result.get("most_severe_consequence") or "intergenic_variant"]}]
