"""Reports of the benchmark study: the paper's tables (Tables I-VI) and figures (Fig. 14, 15)."""

from pairlens.report.render import FORMATS, parse_downstream, write_report
from pairlens.report.tables import GROUPS, Study, build_studies, pearson

__all__ = ["FORMATS", "GROUPS", "Study", "build_studies", "parse_downstream", "pearson",
           "write_report"]
