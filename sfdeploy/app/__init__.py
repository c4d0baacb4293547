"""The top floor: orchestration (the quickstart pipeline) and the gradio demo, by concern.

    common     labels, roles, one-line error text
    store      loaded predictors (serving.load behind an LRU cache)
    catalog    model discovery and baseline / Sampling-Free pairing per detector family
    inputs     uploads checked against sfdeploy.limits, decoded, downscaled
    inference  both models of a pair run once on an image
    render     panels, captions and the metrics table drawn from that (no inference)
    job        the quickstart as a background job of the page
    events     the page's state and event handlers
    ui         the gradio Blocks: layout and wiring
    launch     flags and the server (`python app.py`, `sfdeploy demo`)
    quickstart the pipeline behind `sfdeploy quickstart` (train, evaluate, export, predict, summarise)

Like `sfdeploy.cli` this layer may import every stage; nothing in the core or the stages imports it. This package
imports nothing itself (`sfdeploy --help` registers `quickstart` from here and must stay instant); import the
module you need. gradio, torch and the stages' heavy parts load only when a page is built or a job runs.
"""
