"""Where adapterkit deliberately computes something other than PEFT: the one list.

Each :class:`Difference` names the operation, what PEFT (the pinned oracle, :data:`PEFT_VERSION`)
does, what adapterkit does instead and why, and the test that runs both and shows PEFT's result
beside ours (``tests/test_differences.py`` checks that every test named here exists, and the
PEFT matrix, ``tests/test_peft_matrix.py``, accepts a result that differs from PEFT's only where
an entry here covers it).  Everything not listed computes PEFT's result exactly, or is refused
by name (``not-supported``).

Checked against PEFT 0.22.0.  No longer differences since 0.21.2 (PEFT fixed them; the tests
that showed the difference now show agreement): rsLoRA inputs to ``add_weighted_adapter``
(0.21.2's result was √r too large; ``test_rslora_cat_is_exact_as_in_peft``), ``lora_bias`` in
``add_weighted_adapter`` (0.21.2 wrote a zero bias; ``test_lora_bias_is_the_weighted_sum_as_in_peft``),
DoRA in ``add_weighted_adapter`` (0.21.2 combined it silently wrong, 0.22.0 refuses as ours does;
``test_dora_refused_by_both``), the ΔW of a Conv3d whose kernel starts 1×1, and the order of
``rank_pattern``/``alpha_pattern`` keys on disk (0.22.0 keeps it).
"""

from __future__ import annotations

from dataclasses import dataclass

PEFT_VERSION = "0.22.0"


@dataclass(frozen=True)
class Difference:
    """One deliberate difference: ``test`` is ``tests/<file>.py::<function>``."""

    name: str
    operation: str
    peft: str
    ours: str
    test: str


DIFFERENCES: tuple[Difference, ...] = (
    Difference(
        "linear-is-the-weighted-sum", "combine linear",
        "mixes the A's and the B's separately (A by sign(wᵢsᵢ)·√|wᵢsᵢ|, B by √|wᵢsᵢ|): the product has cross terms",
        "exactly Σ wᵢ·ΔWᵢ, stored as cat (with a rank: as svd at that rank)",
        "tests/test_combine.py::test_linear_peft_has_cross_terms_ours_is_the_weighted_sum"),
    Difference(
        "rank-pattern-results-reload", "combine (factor-space methods) with rank_pattern/alpha_pattern",
        "the result is right in memory but its saved file does not reload (size mismatch)",
        "anchored per-module patterns with scaling 1: the saved result reloads",
        "tests/test_combine.py::test_rank_pattern_peft_result_does_not_reload_ours_does"),
    Difference(
        "different-ranks-zero-padded", "combine ties/dare_*/magnitude_prune",
        "refuses adapters of different ranks",
        "zero-pads the factors to the largest rank (equal to PEFT on the zero-padded pair)",
        "tests/test_combine.py::test_different_ranks_zero_padded_where_peft_refuses"),
    Difference(
        "rank-above-min-dimension", "combine svd/*_svd",
        "a rank above min(out, in) builds factors that do not multiply (the forward pass then fails)",
        "zero-pads the factors: the exact best approximation",
        "tests/test_combine.py::test_rank_above_min_dimension_peft_breaks_ours_pads"),
    Difference(
        "single-adapter-keeps-the-method", "combine of one adapter",
        "switches to linear (a single adapter is not pruned, not truncated)",
        "applies the method asked for",
        "tests/test_combine.py::test_single_adapter_peft_switches_to_linear_ours_applies_the_method"),
    Difference(
        "dare-seeded-per-module", "combine dare_*",
        "draws every mask from torch's global generator, in module order (after the new adapter's initialisation)",
        "one generator per module seeded from (seed, module name): results do not depend on module order or global RNG",
        "tests/test_combine.py::test_seeding_before_peft_call_does_not_reach_its_masks"),
    Difference(
        "list-and-regex-targets-joined", "combine",
        "refuses target_modules given as a list in one adapter and a regex in another (for IA3 too)",
        "joins them (the list as the regex its rule amounts to)",
        "tests/test_combine.py::test_list_and_regex_targets_peft_refuses_ours_joins"),
    Difference(
        "modules-to-save-refused", "combine",
        "writes the base module under the first adapter's modules_to_save, dropping the trained ones",
        "refuses by name (not-supported): a whole module is a replacement with no weighted sum",
        "tests/test_combine.py::test_modules_to_save_peft_writes_the_base_module_ours_refuses"),
    Difference(
        "svd-clamp-beyond-16m", "combine with svd_clamp",
        "torch.quantile refuses inputs above 16M elements, so the clamp fails at high rank on large modules",
        "an exact quantile at any size",
        "tests/test_combine.py::test_quantile_beyond_torchs_16m_limit"),
    Difference(
        "svd-routine-options-not-offered", "combine svd",
        "svd_full_matrices / svd_driver choose torch's dense SVD routine",
        "not offered: the SVD is computed from the factors (exact), there is no routine to choose",
        "tests/test_differences.py::test_svd_routine_options_are_not_offered"),
    Difference(
        "target-parameters-combined", "combine cat/linear of target_parameters adapters",
        "refuses (add_weighted_adapter does not support targeting nn.Parameter)",
        "exactly Σ wᵢ·ΔWᵢ, as for modules",
        "tests/test_differences.py::test_target_parameters_peft_refuses_ours_is_the_weighted_sum"),
    Difference(
        "tied-embeddings-untied", "merge (offline) into a checkpoint tying lm_head to the input embedding",
        "merge_and_unload changes the one shared matrix, so the other embedding moves too",
        "unties by default (lm_head gets its own tensor, config.json says tie_word_embeddings false), so the "
        "merged model computes what the adapter-attached one does; --tied-embeddings shared does as PEFT",
        "tests/test_merge.py::test_tied_embeddings_untie"),
    # quantized bases (adapterkit.quant): the peers are PEFT's merge on a 4-bit model and bitsandbytes 0.50.2
    Difference(
        "qlora-merge-once", "merge into a bitsandbytes 4-bit base",
        "merge_and_unload dequantizes to the compute dtype, adds ΔW there and quantizes the sum again in place: "
        "two roundings, and the merged model stays 4-bit",
        "--dtype: dequantize in fp32, add ΔW, round once to the dense dtype (quantization_config removed); without "
        "--dtype, quantize once from the fp32 sum and report how much of ΔW survived",
        "tests/test_quant_bnb.py::test_peft_merge_into_4bit_rounds_twice_ours_once"),
    Difference(
        "bnb-nested-absmax-nearest", "re-quantize to bitsandbytes 4-bit with double quantization",
        "bitsandbytes 0.50.2's CPU kernel finds each nested absmax code by a bucketed search in fp32 (BinSearch's "
        "Direct2), which lands on a farther code for about 0.15% of values",
        "the nearest code, ties to the lower (the 4-bit codes and the fp32 absmax are bitsandbytes' bit for bit)",
        "tests/test_quant_bnb.py::test_nested_quantizer_is_nearest_where_bitsandbytes_cpu_is_not"),
    Difference(
        "bnb-record-padded", "re-quantize to bitsandbytes 4-bit with double quantization",
        "bitsandbytes packs the quant_state record as json.dumps(record) exactly",
        "the same JSON followed by spaces up to the longest an offset can print as (the output's layout is planned "
        "before the new offset is known); bitsandbytes and transformers read the same dict",
        "tests/test_quant_bnb.py::test_padded_record_reads_as_bitsandbytes_record"),
    # live models with bitsandbytes layers (adapterkit.inject.quantized); merges themselves are PEFT's bit for bit
    Difference(
        "bnb-unmerge-restores", "unmerge_attached / disabled / unload after merge_attached on bitsandbytes Linear4bit / Linear8bitLt",
        "unmerge dequantizes the merged weight, subtracts ΔW and quantizes again: a third rounding, so the base "
        "never comes back (and unload keeps the merged weights)",
        "the packed weight, bias and 8-bit state held before the first merge are put back, bit for bit",
        "tests/test_attach_bnb.py::test_unmerge_puts_the_packed_weights_back_peft_requantizes"),
    # PEFT's other kinds (adapterkit.kinds.loha / lokr): ΔW and merges are PEFT's bit for bit except here
    Difference(
        "lokr-cp-kron-strides", "ΔW / merge of a LoKr module in the CP form (use_effective_conv2d)",
        "get_delta_weight raises RuntimeError (\"view size is not compatible\") where einsum gives W2 strides torch.kron "
        "cannot view (a Conv1d's core (1, 1, k, 1) at r=1): forward, merge and merge_and_unload all fail",
        "kron of standard-strided copies: the ΔW PEFT's formula defines, equal to PEFT's where PEFT computes one",
        "tests/test_kind_lokr.py::test_cp_core_peft_cannot_compute_ours_is_the_formula"),
    Difference(
        "lycoris-combined-as-lora", "combine of LoHa / LoKr adapters (alone or beside LoRA ones)",
        "LoHaModel and LoKrModel have no add_weighted_adapter (AttributeError)",
        "each adapter's exact LoRA form (to_lora), combined as LoRA adapters: cat is base + Σ wᵢ·ΔWᵢ exactly, svd the best "
        "rank-k approximation of that sum (k: the largest LoRA-form rank of the inputs); the result is a LoRA adapter",
        "tests/test_kind_loha.py::test_combine_peft_has_none_ours_is_the_exact_sum"),
)
