"""Scoring what the taggers wrote: the paper's recall metrics (table 2), the tagging metrics (Acc@k,
P/R/F1, Coverage@k, calibration, bootstrap intervals), their plots and tables, and prediction files.

    recall_metrics.py  #Right, HR#1/2/3
    tagging.py         Acc@k, P/R/F1, Coverage@k, ECE, threshold curves, bootstrap intervals
    plots.py           reliability diagram, accuracy-coverage curves, popularity histogram
    tables.py          Markdown tables
    predictions.py     a prediction file of `llm4tag tag` or `llm4tag recall` against gold annotations
"""
