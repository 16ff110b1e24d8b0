using System.Text.Json;
using System.Text.Json.Nodes;
using PruneKernel.Checkpoints;
using PruneKernel.Generation;
using PruneKernel.Language;
using PruneKernel.Pruning;
using PruneKernel.Quantization;
using PruneKernel.Text;
using PruneKernel.Vision;
using TorchSharp;
using static TorchSharp.torch;

namespace PruneKernel.Tests.Quantization;

/// <summary>
/// Quantized weights: storage layouts, quantizers, the AWQ/GPTQ unpackers against the independent Python packer
/// (tools/make_quant_fixtures.py), quantized loading and generation, error bounds, and pruning on quantized weights.
/// </summary>
public sealed class QuantizationTests
{
    private static readonly string Units = Fixtures.Path("quant", "units");

    [Fact]
    public void NibbleAndTinyGemmLayoutsRoundTrip()
    {
        using var scope = NewDisposeScope();
        var generator = new Generator(3);
        foreach (var k in new long[] { 256, 64, 96 })
        {
            var codes = torch.randint(0, 16, [24, k], generator: generator, dtype: ScalarType.Int64).to(ScalarType.Byte);
            Assert.True(Int4Layouts.UnpackNibbles(Int4Layouts.PackNibbles(codes)).eq(codes).all().item<bool>());
            var ikt = Int4Layouts.InnerKTiles(k);
            var packed = Int4Layouts.PackTinyGemm(codes, ikt);
            Assert.Equal([24 / 8, k / (16 * ikt), 32, ikt / 2], packed.shape);
            Assert.Equal(ScalarType.Int32, packed.dtype);
            Assert.True(Int4Layouts.UnpackTinyGemm(packed).eq(codes).all().item<bool>());
        }
    }

    /// <summary>
    /// The tensor-permutation packing equals a scalar transcription of PyTorch's CUDA converter
    /// (matrix_to_m16n8k16_Bint4_layout: lane t reads row nTile·8 + t/4 and bytes kBase + t%4 (+4, +8, +12) of the
    /// uint8 [n][k/2] input whose high nibble is the even input; the word is v3L..v0L v3H..v0H from the top).
    /// </summary>
    [Fact]
    public void TinyGemmPackingFollowsTheCudaConvertersIndexing()
    {
        using var scope = NewDisposeScope();
        const int n = 16, k = 256, ikt = 8;
        var codes = torch.randint(0, 16, [n, k], generator: new Generator(9), dtype: ScalarType.Int64).to(ScalarType.Byte);
        var c = codes.data<byte>().ToArray();
        byte Byte(int row, int b) => (byte)((c[(row * k) + (2 * b)] << 4) | c[(row * k) + (2 * b) + 1]);
        var expected = new int[n / 8 * (k / (ikt * 16)) * 32 * (ikt / 2)];
        var index = 0;
        for (var nTile = 0; nTile < n / 8; nTile++)
        {
            for (var kOuter = 0; kOuter < k / (ikt * 16); kOuter++)
            {
                for (var t = 0; t < 32; t++)
                {
                    for (var inner = 0; inner < ikt; inner += 2)
                    {
                        var row = (nTile * 8) + (t / 4);
                        var kBase0 = ((kOuter * ikt) + inner) * 16 / 2;
                        var kBase1 = kBase0 + 8;
                        int[] ks = [kBase0 + (t % 4), kBase0 + (t % 4) + 4, kBase1 + (t % 4), kBase1 + (t % 4) + 4];
                        var v = ks.Select(b => (uint)Byte(row, b)).ToArray();
                        var pack = ((v[3] & 0xF) << 28) | ((v[2] & 0xF) << 24) | ((v[1] & 0xF) << 20) | ((v[0] & 0xF) << 16)
                            | ((v[3] & 0xF0) << 8) | ((v[2] & 0xF0) << 4) | (v[1] & 0xF0) | ((v[0] & 0xF0) >> 4);
                        expected[index++] = unchecked((int)pack);
                    }
                }
            }
        }

        Assert.Equal(expected, Int4Layouts.PackTinyGemm(codes, ikt).data<int>().ToArray());
    }

    [Fact]
    public void TinyGemmScalesAndZerosReproduceTheIntegerZeroPoint()
    {
        using var scope = NewDisposeScope();
        var scales = torch.tensor(new float[] { 0.5f, 0.25f }).view(2, 1);
        var zeros = torch.tensor(new float[] { 3, 12 }).view(2, 1);
        var sz = Int4Layouts.TinyGemmScalesAndZeros(scales, zeros).to(ScalarType.Float32);
        // (q − 8)·s + zero = (q − z)·s for every code q.
        foreach (var q in new[] { 0, 7, 15 })
        {
            Assert.Equal((q - 3) * 0.5f, ((q - 8) * sz[0, 0, 0].item<float>()) + sz[0, 0, 1].item<float>(), 5);
            Assert.Equal((q - 12) * 0.25f, ((q - 8) * sz[0, 1, 0].item<float>()) + sz[0, 1, 1].item<float>(), 5);
        }
    }

    /// <summary>
    /// PyTorch's CPU int4 kernel dequantizes with tinygemm's convention ((code − 8)·scale + zero, scales and zeros
    /// [groups, out, 2]), so it checks on the CPU the scales-and-zeros we hand to tinygemm on CUDA.
    /// </summary>
    [Fact]
    public void TinyGemmScalesAndZerosAgreeWithPyTorchsCpuInt4Kernel()
    {
        using var scope = NewDisposeScope();
        const int n = 64, k = 256, group = 128;
        var generator = new Generator(1);
        var codes = torch.randint(0, 16, [n, k], generator: generator, dtype: ScalarType.Int64);
        var scales = torch.rand([n, k / group], generator: generator) * 0.01 + 0.005;
        var zeros = torch.randint(0, 16, [n, k / group], generator: generator, dtype: ScalarType.Int64).to(ScalarType.Float32);
        var packed = AtenOps.Call("aten::_convert_weight_to_int4pack_for_cpu", "", codes.to(ScalarType.Int32), 8L);
        Assert.NotNull(packed);
        var sz = Int4Layouts.TinyGemmScalesAndZeros(scales, zeros);
        var x = torch.randn([3, k], generator: generator).to(ScalarType.BFloat16);
        var y = AtenOps.Call("aten::_weight_int4pack_mm_for_cpu", "", x, packed, (long)group, sz);
        Assert.NotNull(y);
        var w = (codes.to(ScalarType.Float32) - zeros.repeat_interleave(group, 1)) * scales.repeat_interleave(group, 1);
        var expected = nn.functional.linear(x.to(ScalarType.Float32), w);
        // bf16 scales, zeros and output: well under 1 %; a wrong zero convention is off by whole steps.
        Assert.True(((y.to(ScalarType.Float32) - expected).norm() / expected.norm()).item<float>() < 0.01);
    }

    [Fact]
    public void QuantizersStayWithinHalfAStep()
    {
        using var scope = NewDisposeScope();
        var w = torch.randn([12, 64], generator: new Generator(5)) * 0.05;
        w[3] = torch.zeros(64); // an all-zero row must stay finite and exact
        using var int8 = WeightQuantizer.Int8(w);
        var step8 = int8.Scales.unsqueeze(1);
        Assert.True(((int8.Dequantize() - w).abs() <= (step8 / 2) + 1e-7).all().item<bool>());
        Assert.True(int8.Dequantize()[3].eq(0).all().item<bool>());

        using var int4 = WeightQuantizer.Int4(w, 16, "w");
        var step4 = int4.Scales.repeat_interleave(16, 1);
        Assert.True(((int4.Dequantize() - w).abs() <= (step4 / 2) + 1e-6).all().item<bool>());
        Assert.True(int4.Codes.max().item<byte>() <= 15);
        Assert.Throws<ModelConfigException>(() => WeightQuantizer.Int4(w, 128, "w"));
    }

    public static TheoryData<string> UnitCases() => [.. JsonNode.Parse(File.ReadAllText(Path.Combine(Units, "cases.json")))!.AsArray().Select(c => c!["name"]!.GetValue<string>())];

    /// <summary>Our unpacking equals the independent Python unpacker exactly: codes, and the float32 dequantized weight.</summary>
    [Theory]
    [MemberData(nameof(UnitCases))]
    public void UnpackingEqualsThePythonUnpacker(string name)
    {
        using var scope = NewDisposeScope();
        var cases = JsonNode.Parse(File.ReadAllText(Path.Combine(Units, "cases.json")))!.AsArray();
        var spec = cases.Single(c => c!["name"]!.GetValue<string>() == name)!.AsObject();
        var config = CheckpointQuantization.Parse(new JsonObject { ["quantization_config"] = JsonNode.Parse(spec.ToJsonString()) }, name)!;
        using var weights = CheckpointWeights.Open(Units);
        var keys = PackedCheckpointWeights.Suffixes.Where(s => weights.Contains($"{name}.{s}")).ToDictionary(s => s, s => $"{name}.{s}");
        long[] shape = [spec["out_features"]!.GetValue<long>(), spec["in_features"]!.GetValue<long>()];
        using var unpacked = PackedCheckpointWeights.Unpack(config, keys, weights, name, shape);
        using var expectedCodes = weights.ReadTensor($"{name}.codes");
        using var expected = weights.ReadTensor($"{name}.dequantized");
        var codes = unpacked.Permutation is { } perm ? torch.zeros_like(unpacked.Codes).index_copy_(1, perm, unpacked.Codes) : unpacked.Codes;
        Assert.True(codes.eq(expectedCodes).all().item<bool>(), "codes");
        Assert.True(unpacked.Dequantize().eq(expected).all().item<bool>(), "dequantized weight");
        Assert.Equal(name == "gptq_act_order", unpacked.Permutation is not null);
    }

    [Theory]
    [InlineData("llava-tiny-awq", "awq 4-bit g16")]
    [InlineData("llava-tiny-gptq", "gptq 4-bit g16 act-order")]
    public void PackedFixtureModelsLoadExactlyAndGenerate(string name, string description)
    {
        var folder = Fixtures.Model(name);
        using var lvlm = Lvlm.Load(folder);
        Assert.Equal(description, lvlm.Quantization);
        using var expected = SafetensorsFile.Open(Path.Combine(folder, "dequantized.safetensors"));
        using var scope = NewDisposeScope();
        foreach (var (module, kernel, rows) in Kernels(lvlm))
        {
            var stacked = torch.cat(rows.Select(r => expected.ReadTensor($"{r}.weight")).ToArray(), 0);
            Assert.True(kernel.Dequantize().eq(stacked).all().item<bool>(), module);
        }

        var prompt = lvlm.CreatePrompt([PromptMessage.User("Describe the image.", 1)], [ImageDecoder.Load(Fixtures.Path("images", "img03.png"))]);
        var hiddenQuantized = Prompt(lvlm, prompt);
        // The same network with the Python unpacker's weights installed dense gives the same states.
        foreach (var (_, _, rows) in Kernels(lvlm).ToList())
        {
            foreach (var row in rows)
            {
                Linear(lvlm, row).Install(new DenseWeights(expected.ReadTensor($"{row}.weight")));
            }
        }

        var hiddenDense = Prompt(lvlm, prompt);
        Assert.True(torch.allclose(hiddenQuantized, hiddenDense, 1e-5, 1e-5));
        Assert.Equal(8, lvlm.Generate(prompt, new GenerationOptions { MaxNewTokens = 8 }).OutputTokenIds.Count);
    }

    /// <summary>Quantizing llava-tiny-f32 on load: every decoder layer's output and the logits stay close to float32's.</summary>
    [Theory]
    [InlineData(WeightQuantization.Int8, 0.02, 0.02)]
    [InlineData(WeightQuantization.Int4, 0.3, 0.3)]
    public void OnLoadQuantizationErrorIsBounded(WeightQuantization mode, double layerBound, double logitsBound)
    {
        var folder = Fixtures.Model("llava-tiny-f32");
        using var dense = Lvlm.Load(folder);
        using var quantized = Lvlm.Load(folder, new LvlmLoadOptions { Quantization = mode, QuantizationGroupSize = 16, QuantizeLmHead = true });
        Assert.StartsWith(mode == WeightQuantization.Int8 ? "int8" : "int4-g16", quantized.Quantization, StringComparison.Ordinal);
        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        var x = torch.randn([1, 40, 16], generator: new Generator(17));
        var positions = torch.arange(40, dtype: ScalarType.Int64).unsqueeze(0);
        var (layersDense, layersQuantized) = (new List<Tensor>(), new List<Tensor>());
        var finalDense = dense.Network.language_model.forward(x, positions, null, layersDense);
        var finalQuantized = quantized.Network.language_model.forward(x, positions, null, layersQuantized);
        var errors = layersDense.Zip(layersQuantized, RelativeError).ToList();
        var logitsError = RelativeError(dense.Network.Logits(finalDense), quantized.Network.Logits(finalQuantized));
        Assert.All(errors, e => Assert.InRange(e, 1e-9, layerBound));
        Assert.InRange(logitsError, 1e-9, logitsBound);
    }

    [Fact]
    public void PruningWorksUnchangedOnQuantizedWeights()
    {
        var folder = Fixtures.Model("llava-tiny-f32");
        using var quantized = Lvlm.Load(folder, new LvlmLoadOptions { Quantization = WeightQuantization.Int4, QuantizationGroupSize = 16 });
        var prompt = quantized.CreatePrompt([PromptMessage.User(string.Join(' ', Enumerable.Repeat("Tell me about the picture in detail.", 6)), 1)],
            [ImageDecoder.Load(Fixtures.Path("images", "img03.png"))]);
        var options = new ContextPruningOptions { BreakEven = PruningBreakEven.Ignore, Rate = 0.3, Layers = 2 };
        var pruned = quantized.Generate(prompt, new GenerationOptions { MaxNewTokens = 6, Pruning = options });
        Assert.Equal(6, pruned.OutputTokenIds.Count);
        var report = Assert.IsType<PruningReport>(pruned.Pruning);
        Assert.Equal(2, report.Layers.Count);
        Assert.All(report.Layers, l => Assert.True(l.CandidatesAfter < l.CandidatesBefore));
    }

    [Fact]
    public void UnsupportedCheckpointQuantizationNamesTheMethod()
    {
        ModelConfigException Error(string json) =>
            Assert.Throws<ModelConfigException>(() => CheckpointQuantization.Parse(JsonNode.Parse($"{{\"quantization_config\": {json}}}")!.AsObject(), "config.json"));
        Assert.Contains("'bitsandbytes'", Error("""{"quant_method": "bitsandbytes", "load_in_4bit": true}""").Message, StringComparison.Ordinal);
        Assert.Contains("'fp8'", Error("""{"quant_method": "fp8"}""").Message, StringComparison.Ordinal);
        Assert.Contains("GPTQ with 8 bits", Error("""{"quant_method": "gptq", "bits": 8, "group_size": 128}""").Message, StringComparison.Ordinal);
        Assert.Contains("'gemv'", Error("""{"quant_method": "awq", "bits": 4, "version": "gemv"}""").Message, StringComparison.Ordinal);
        Assert.Contains("'marlin'", Error("""{"quant_method": "gptq", "bits": 4, "checkpoint_format": "marlin"}""").Message, StringComparison.Ordinal);
        Assert.Null(CheckpointQuantization.Parse(new JsonObject(), "config.json"));
    }

    /// <summary>Parts quantized with different GPTQ act-orders cannot share one kernel: they are stacked dequantized.</summary>
    [Fact]
    public void FusedPartsWithDifferentActOrdersStackDense()
    {
        using var scope = NewDisposeScope();
        var w = torch.randn([8, 32], generator: new Generator(1));
        LinearWeights Part(long[] perm)
        {
            var q = WeightQuantizer.Int4(w, 16, "w");
            return new Int4Weights(q.Codes, q.Scales, q.Zeros, 16, torch.tensor(perm));
        }

        var identity = Enumerable.Range(0, 32).Select(i => (long)i).ToArray();
        using var same = LinearWeights.Stack([Part(identity), Part(identity)]);
        Assert.IsType<Int4Weights>(same);
        using var mixed = LinearWeights.Stack([Part(identity), Part([.. identity.Reverse()])]);
        Assert.IsType<DenseWeights>(mixed);
        Assert.Contains(QuantizationDiagnostics.Notes, n => n.Contains("act-order", StringComparison.Ordinal));
    }

    /// <summary>
    /// The libtorch entry points work from C# on the CPU build too: the dispatcher by name (handles given fresh, results
    /// owned by TorchSharp) and the CPU int8 shim, both against the dequantized product.
    /// </summary>
    [Fact]
    public void AtenEntryPointsMatchTheDequantizedProduct()
    {
        using var scope = NewDisposeScope();
        var generator = new Generator(11);
        var x = torch.randn([3, 64], generator: generator);
        var codes = torch.randint(-127, 128, [24, 64], generator: generator, dtype: ScalarType.Int64).to(ScalarType.Int8);
        var scales = torch.rand([24], generator: generator) * 0.01;
        var expected = nn.functional.linear(x, codes.to(ScalarType.Float32)) * scales;
        Assert.True(AtenOps.HasDispatcher && AtenOps.HasCpuInt8PackMm);
        var byName = AtenOps.Call("aten::_weight_int8pack_mm", "", x, codes, scales);
        var byShim = AtenOps.CpuWeightInt8PackMm(x, codes, scales);
        Assert.NotNull(byName);
        Assert.NotNull(byShim);
        Assert.True(torch.allclose(byName, expected, 1e-4, 1e-5));
        Assert.True(torch.allclose(byShim, expected, 1e-4, 1e-5));
        // The arguments are still ours after the dispatcher consumed its own handles on them.
        Assert.Equal(64, x.shape[1]);
        Assert.True(codes.to(ScalarType.Float32).abs().max().item<float>() <= 127);
        Assert.Null(AtenOps.Call("aten::no_such_operator", "", x));
    }

    [Fact]
    public void Int8KernelsFusedAndDequantizingPathsAgree()
    {
        using var scope = NewDisposeScope();
        var w = torch.randn([24, 64], generator: new Generator(2)) * 0.05;
        using var weights = WeightQuantizer.Int8(w);
        using var kernel = new Int8Kernel(weights, ScalarType.Float32, torch.CPU);
        var reference = kernel.Dequantize();
        foreach (var rows in new[] { 1, LinearKernel.DecodeRows + 5 })
        {
            var x = torch.randn([1, rows, 64], generator: new Generator((ulong)rows));
            var bias = torch.randn([24], generator: new Generator(4));
            Assert.True(torch.allclose(kernel.Forward(x, bias), nn.functional.linear(x, reference, bias), 1e-4, 1e-5), $"{rows} rows");
        }
    }

    private static IEnumerable<(string Module, LinearKernel Kernel, string[] Rows)> Kernels(Lvlm lvlm)
    {
        var model = lvlm.Network.language_model;
        for (var i = 0; i < model.layers.Count; i++)
        {
            var layer = model.layers[i];
            var prefix = $"language_model.layers.{i}";
            yield return ($"{prefix}.qkv", layer.self_attn.FusedQkv.Kernel!, [$"{prefix}.self_attn.q_proj", $"{prefix}.self_attn.k_proj", $"{prefix}.self_attn.v_proj"]);
            yield return ($"{prefix}.o", layer.self_attn.o_proj.Kernel!, [$"{prefix}.self_attn.o_proj"]);
            yield return ($"{prefix}.gate_up", layer.mlp.FusedGateUp.Kernel!, [$"{prefix}.mlp.gate_proj", $"{prefix}.mlp.up_proj"]);
            yield return ($"{prefix}.down", layer.mlp.down_proj.Kernel!, [$"{prefix}.mlp.down_proj"]);
        }
    }

    private static Linear Linear(Lvlm lvlm, string name) =>
        (Linear)lvlm.Network.named_modules().Single(m => m.name == name).module;

    private static Tensor Prompt(Lvlm lvlm, LvlmPrompt prompt)
    {
        using var noGrad = torch.no_grad();
        return lvlm.Network.ForwardPrompt(prompt.InputIds, PruneKernel.Engine.Prefill.EncodeImages(lvlm.Network, prompt, null, lvlm.Identity), null, null);
    }

    private static double RelativeError(Tensor expected, Tensor actual) =>
        (actual - expected).norm().item<float>() / expected.norm().item<float>();
}
