"""Dataset-level audits of where a model looks, a report with figures, and a method report card.

    from xai.audit import audit, write_report
    result = audit(model, images, labels=labels, masks=masks, explainer="grad_cam",
                   layer="features")
    result.flags                      # classes whose attribution sits outside the object
    write_report(result, "audit-report")   # report.html (figures embedded) + report.json

``python -m xai.audit.report_card`` scores every registered attribution method on the
ground-truth sets of :mod:`xai.data.shortcuts`.
"""

from xai.audit.audit import AuditConfig, AuditResult, audit, run_audit
from xai.audit.report import write_report

__all__ = ["AuditConfig", "AuditResult", "audit", "run_audit", "write_report"]
