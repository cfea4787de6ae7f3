"""The sample corpus, the demo config and the probe's labelled examples; installed as `atelier_examples`."""
