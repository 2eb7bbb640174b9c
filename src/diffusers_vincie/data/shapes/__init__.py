"""The shapes world (VINCIE-Shapes): exact synthetic editing sessions (:mod:`.world`), their videos with a
ground-truth sidecar (:mod:`.video`, needs ``av``), the reading of its frames from pixels alone (:mod:`.pixels`)
and the exact scoring of an edit (:mod:`.score`)."""
