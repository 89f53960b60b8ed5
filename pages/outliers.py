"""Outliers: which input channels carry outsized activations, and which term keeps their weights."""

import streamlit as st

from ui.text import esc
from ui.state import current_path, current_run, run_info, run_mtime, run_task
from oats.evaluation import primary_metric  # the task registry's answer
from ui.widgets import chart, how_to_read, image_upload, layer_picker, table
from oats.runs.estimate import duration
from oats.runs.lazy import streamed_seconds
from ui.cached import (ablation_reference, channel_intervention, column_shares, evaluation_tokens, mask_density,
                       massive_profile, second_moments_by_input)
from oats.explain import outliers, quality
from ui import budget_figures, evaluations, outlier_figures
from oats.errors import OatsError
from oats.evaluation import metric_name

st.title("Outliers")
st.caption("In transformers a few input channels often carry activations far larger than the rest. OATS scales each weight column by "
           "its channel's RMS input D_j, so these columns weigh most in the decomposition.")

run = current_run()
if run is not None:
    path = current_path()
    mtime = run_mtime(path)
    threshold = st.slider("Outlier threshold: RMS input above this many times the median channel's", 2.0, 50.0, 5.0,
                          0.5, key="outlier-threshold")
    mom = second_moments_by_input(path, mtime)
    for width in mom.widths():
        labels, m2 = mom.matrix(width)
        chart(outlier_figures.moments_heatmap(labels, m2), key=f"moments-{width}")
    how_to_read("One row per layer input (inputs shared by several matrices, such as q, k and v, appear once), one "
                "column per input channel: the mean of x² over the calibration tokens, on a log colour scale. Bright "
                "vertical stripes are outlier channels: a few features with far larger activations than the rest, in "
                "every layer that reads the residual stream. OATS scales each weight column by sqrt of this value, so "
                "the columns of these channels weigh most in its objective; the chart below counts, per layer, the "
                "channels whose RMS exceeds the threshold times the median channel's.")
    rows = outliers.outlier_table(mom, threshold)
    chart(outlier_figures.outlier_counts_figure(rows, threshold), key="counts")
    c1, c2 = st.columns(2)
    with c1:
        st.markdown("**Per layer input**")
        table(rows, "outliers-per-input", key="csv-outliers", height=300)
    with c2:
        st.markdown("**Per channel** (flagged in many layers: a feature of the residual stream)")
        table(outliers.outlier_channels(mom, threshold), "outlier-channels", key="csv-channels", height=300)

    st.subheader("One layer, channel by channel")
    q = layer_picker(run)
    cs = column_shares(path, mtime, q)
    s = cs.summary(threshold)
    c = st.columns(3)
    c[0].metric("Outlier channels in this layer's input", s["outlier_channels"])
    c[1].metric("Sparse share, outlier columns", "—" if s["outlier_channels"] == 0 else f"{s['sparse_share_outliers']:.0%}")
    c[2].metric("Sparse share, other columns", f"{s['sparse_share_others']:.0%}")
    chart(outlier_figures.column_figure(cs, threshold), key="columns")
    st.caption("Share = ‖S[:, j]‖² / (‖S[:, j]‖² + ‖L[:, j]‖²) in the scaled space (S = S' D, L = L' D).")
    if not s["outlier_channels"]:
        most = max(rows, key=lambda r: r["outliers"])
        if most["outliers"]:
            st.info(f"{esc(q)}'s input has no channel above {threshold:g}× the median. Pick a layer reading "
                    f"**{esc(most['input'])}** ({most['outliers']} outlier channels) to see where outlier columns go.")
    else:
        more = "low-rank" if s["sparse_share_outliers"] < s["sparse_share_others"] else "sparse"
        st.info(f"In {esc(q)}, the outlier columns sit mostly in the **{more} term** (sparse share "
                f"{s['sparse_share_outliers']:.0%} vs {s['sparse_share_others']:.0%} elsewhere; the sparse term keeps "
                f"{s['sparse_nonzeros_outliers']:.0f} vs {s['sparse_nonzeros_others']:.0f} entries per column).")
    rec = run.layer(q)
    chart(outlier_figures.mask_figure(mask_density(path, mtime, q), rec.shape, q), key="mask")
    with st.expander("Per-channel table"):
        table(cs.rows(), f"channels-{q}", key="csv-columns", height=300)

    st.subheader("Massive activations")
    st.caption("A few activations in a transformer's residual stream are thousands of times larger than the rest "
               "(Sun et al., 2024), on a few tokens and channels. Which are they, does the compressed model keep them, "
               "and does it still depend on them?")
    slow = streamed_seconds(run, 64, passes=2)  # a model on disk streams each pass (None: in memory)
    if slow is not None and slow > 3:
        st.caption(f"This model stays on disk: the two passes read its weights as they run, about {duration(slow)} "
                   "on this machine.")
    if st.toggle("Trace one input through the dense and the compressed model (one forward pass each)", key="massive-on"):
        from oats.data import bundled_images, evaluation_sentences
        from oats.explain import activations
        from oats.explain.vit import is_vision_run
        text, image = None, None
        if is_vision_run(run):
            photos = bundled_images()
            names = sorted(photos)
            upload = "upload your own ..."
            pick = st.selectbox("Photo", names + [upload], index=names.index("chelsea") if "chelsea" in names else 0,
                                key="massive-photo")
            if pick != upload:
                image, input_key = photos[pick], f"photo:{pick}"
            else:
                got = image_upload("massive-upload", "trace")
                if got is None:
                    st.stop()
                image, input_key, _ = got
        else:
            samples = evaluation_sentences()[:8]
            own = "type your own ..."
            pick = st.selectbox("Text", samples + [own], key="massive-sample")
            text = st.text_input("Your text", "The cat sat on the mat.", key="massive-text") if pick == own else pick
            input_key = f"text:{text}"
        try:
            prof = massive_profile(path, mtime, input_key, text, image)
        except OatsError as e:
            st.error(esc(e))
            st.stop()
        chart(outlier_figures.massive_depth_figure(prof), key="massive-depth")
        nb = prof.n_blocks
        if st.session_state.get("massive-block", 0) >= nb:  # another run with fewer blocks
            st.session_state.pop("massive-block")
        block = st.select_slider("Block", list(range(nb)), value=min(1, nb - 1),
                                 key="massive-block", help="The block whose output is drawn below, and whose input "
                                                           "the intervention changes.")
        chart(outlier_figures.token_channel_figure(prof, block), key="massive-heat")
        d, c = prof.modes["dense"], prof.modes["both"]
        tok, ch = prof.tokens[int(d.top_token[block, 0])], int(d.top_channel[block, 0])
        st.markdown(
            f"**How to read this.** Top: the three largest magnitudes |h| of every block's output and its median "
            f"(log scale), for this input ({esc(prof.description)}); a massive activation stands orders of magnitude above "
            f"the median. Below: block {block}'s output, one row per token, one column per channel, colour log₁₀ |h| "
            f"from the block's median (darkest, and everything below it) to its largest (brightest); the three largest "
            f"cells of each model are circled and the largest is named. Here the largest is **{d.top[block, 0]:.3g}** at token *{esc(tok, 80)}*, channel **{ch}** in "
            f"the dense model ({d.top[block, 0] / max(d.median[block], 1e-12):.0f}× its median) and "
            f"**{c.top[block, 0]:.3g}** at token *{esc(prof.tokens[int(c.top_token[block, 0])], 80)}*, channel "
            f"**{int(c.top_channel[block, 0])}** in the compressed one.")
        with st.expander("The top activations of every block (table)"):
            table([{("× median" if k == "x_median" else k): v for k, v in r.items()} for r in prof.rows()],
                  "massive-activations", key="csv-massive", height=300)

        st.markdown(f"**Intervention on block {block}'s input**")
        pm = primary_metric(run_task(run_info(path)) or "")
        if pm is None:
            st.info("This run's manifest does not name its model's task, so there is no metric to measure the "
                    "intervention with: compress it with the app or `oats compress`.")
        else:
            metric, higher = pm
            c1, c2 = st.columns(2)
            k = int(c1.number_input("k: outlier channels to change", 0, activations.KEEP_CHANNELS, 1, key="massive-k"))
            how = c2.radio("Set them to", list(activations.HOW), horizontal=True, key="massive-how",
                           help="zero, or the channel's mean over this input's tokens in the dense model")
            chans, means = prof.top_channels(block, k)
            values = None if how == "zero" else tuple(round(v, 6) for v in means)
            tokens = evaluation_tokens(path, mtime)
            seconds = activations.estimated_seconds(prof, tokens, 2)
            task = run_task(run_info(path))
            settings = evaluations.quick_settings(path, mtime, run.loaded)
            planned = quality.describe(settings, (settings or {}).get("domains") or (), task)
            st.caption(f"Channels {', '.join(map(str, chans)) or '(none: k = 0 changes nothing)'} — the k largest of "
                       f"block {block}'s input in the dense model on this input — set to {how} at every token, in the "
                       f"dense and in the compressed model. Cost: 2 quick evaluations ({tokens} tokens each, "
                       f"{esc(planned)}), about {seconds:.0f} s on this machine (estimated from the forward pass "
                       f"above), plus 2 for the models without intervention the first time.")
            done_key = f"intervened::{path}::{mtime}"
            done = st.session_state.setdefault(done_key, [])
            if st.button("Run the intervention", type="primary", icon=":material/science:", key="massive-go"):
                bar = st.progress(0.0, text="dense and compressed model without intervention ...")
                try:
                    ablation_reference(path, mtime)
                    bar.progress(0.5, text=f"block {block}: {k} channels set to {how} ...")
                    channel_intervention(path, mtime, block, tuple(chans), values)
                    if (block, tuple(chans), values) not in done:
                        done.append((block, tuple(chans), values))
                except OatsError as e:
                    st.error(esc(e))
                bar.empty()
            if done:
                ref = ablation_reference(path, mtime)
                rows = [{"intervention": "none", "model": "dense" if r["change"] == "dense model" else "compressed",
                         **{m: v for m, v in r.items() if m not in ("block", "change")}} for r in ref]
                for b, ch_, vals in done:
                    label = f"block {b}: top {len(ch_)} → {'zero' if vals is None else 'mean'}"
                    rows += [{"intervention": label, **r} for r in channel_intervention(path, mtime, b, ch_, vals)]
                doms = quality.domains_of(rows, metric)
                chart(outlier_figures.intervention_figure(rows, metric, higher, measured_on=evaluations.quick_measured_on(
                    settings, doms, task, mean=True)), key="massive-intervention")
                if doms:  # the same evaluations, each domain's held-out part apart: no extra cost
                    base_rows = {r["model"]: r for r in rows if r["intervention"] == "none"}
                    chart(budget_figures.domain_change_figure(
                        [f"{r['intervention']} · {r['model']}" for r in rows], rows,
                        [base_rows[r["model"]] for r in rows], metric, higher, doms, evaluations.titles(doms),
                        f"Outlier-channel intervention per domain: {metric_name(metric)}", "the same model without intervention",
                        measured_on=evaluations.quick_measured_on(settings, doms, task)),
                        key="massive-intervention-domains")
                base = {r["model"]: r[metric] for r in rows if r["intervention"] == "none"}
                last = [r for r in rows if r["intervention"] != "none"][-2:]
                drop = {r["model"]: activations.worsening(base[r["model"]], r[metric], higher) for r in last}
                st.info(f"{last[0]['intervention']} (channels {', '.join(map(str, done[-1][1])) or 'none'}): {metric_name(metric)}"
                        f"{' (mean over the domains)' if doms else ''} worsens by {drop['dense']:.4g} in the dense "
                        f"model and by {drop['compressed']:.4g} in the compressed one — "
                        + ("the compressed model depends on these channels about as much as the dense one."
                           if abs(drop['compressed'] - drop['dense']) <= 0.25 * max(abs(drop['dense']), 1e-9) else
                           ("the compressed model depends on them more." if drop['compressed'] > drop['dense'] else
                            "the compressed model depends on them less.")))
                # block, k and how are in the intervention's label; the rows without one have none of
                # them (a missing cell reads "None" in a table)
                shown = [{k: v for k, v in r.items() if k not in ("block", "k", "set_to", "seconds")} for r in rows]
                table(evaluations.metric_columns(shown, metric), "intervention", key="csv-intervention")
