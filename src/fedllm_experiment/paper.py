"""The source paper's published figures (Otoum, Asad, Nayak, arXiv 2504.16032), for comparison.

These are the paper's numbers, copied from its Tables II-IV, never ours. The paper reports its
strategy latency in seconds for the whole test set and its "energy efficiency" as requests per
minute; it does not say which F1 average it uses. Reports print those caveats next to the figures.
"""

from __future__ import annotations

# Table III: accuracy and F1 after 10 rounds (GSFS: 10 aggregations), OPT models, IoT-23.
TABLE3 = {
    "fedavg": {
        "acc_central": 0.8945,
        "acc_clients": 0.8732,
        "f1_central": 0.8761,
        "f1_clients": 0.8619,
    },
    "fedopt": {
        "acc_central": 0.8982,
        "acc_clients": 0.8522,
        "f1_central": 0.8641,
        "f1_clients": 0.8685,
    },
    "gsfs": {
        "acc_central": 0.9008,
        "acc_clients": 0.8881,
        "f1_central": 0.8825,
        "f1_clients": 0.8754,
    },
}

# Table IV: latency (s) and energy efficiency (requests per minute).
TABLE4 = {
    "fedavg": {
        "latency_central_s": 48.12,
        "latency_clients_s": 71.43,
        "rpm_central": 1.25,
        "rpm_clients": 0.84,
    },
    "fedopt": {
        "latency_central_s": 42.09,
        "latency_clients_s": 55.08,
        "rpm_central": 1.43,
        "rpm_clients": 1.09,
    },
    "gsfs": {
        "latency_central_s": 37.74,
        "latency_clients_s": 34.69,
        "rpm_central": 1.59,
        "rpm_clients": 1.73,
    },
}

# Table II: centrally fine-tuned base models (precision, recall, F1, accuracy, ms, req/min).
TABLE2 = {
    "BERT": (0.9058, 0.8932, 0.8741, 0.8932, 115.48, 519.40),
    "ALBERT": (0.9073, 0.9001, 0.8846, 0.9015, 110.62, 542.50),
    "GPT-2 (124M)": (0.9005, 0.8912, 0.8721, 0.8910, 125.54, 478.00),
    "OPT-350M": (0.9065, 0.8904, 0.8793, 0.8971, 88.14, 680.70),
    "OPT-1.3b": (0.9172, 0.9083, 0.8878, 0.9054, 215.36, 278.70),
}

# The paper's data: cleaned IoT-23, 48,003 flows split 70/20/10 (Table I).
PAPER_FLOWS = 48003
PAPER_TEST_FLOWS = 4800
