using System.Text.Json.Nodes;
using PruneKernel.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace PruneKernel.Tests.Models;

/// <summary>The goldens tools/make_fixtures.py saved from transformers for one fixture model.</summary>
internal sealed class Golden : IDisposable
{
    private readonly SafetensorsFile _file;

    /// <param name="modelName">The fixture folder under tests/fixtures/models.</param>
    /// <param name="goldenName">The golden's file stem: "golden", or e.g. "golden-img04" for a model with several.</param>
    public Golden(string modelName, string goldenName = "golden")
    {
        Folder = Fixtures.Model(modelName);
        _file = SafetensorsFile.Open(System.IO.Path.Combine(Folder, goldenName + ".safetensors"));
        Meta = (JsonObject)JsonNode.Parse(File.ReadAllText(System.IO.Path.Combine(Folder, goldenName + ".json")))!;
    }

    public string Folder { get; }

    public JsonObject Meta { get; }

    public string Prompt => Meta["prompt"]!.GetValue<string>();

    public string ImagePath => System.IO.Path.GetFullPath(System.IO.Path.Combine(Folder, Meta["image"]!.GetValue<string>()));

    public Tensor this[string name] => _file.ReadTensor(name);

    public bool Has(string name) => _file.Tensors.ContainsKey(name);

    public int[] Ints(string name)
    {
        using var t = this[name];
        return t.to(ScalarType.Int64).data<long>().Select(v => (int)v).ToArray();
    }

    public void Dispose() => _file.Dispose();

    /// <summary>max |actual - expected| / max |expected|: the relative error the parity bar is stated in.</summary>
    public static double RelativeError(Tensor actual, Tensor expected)
    {
        using var scope = NewDisposeScope();
        var a = actual.cpu().to(ScalarType.Float64);
        var e = expected.cpu().to(ScalarType.Float64);
        return (a - e).abs().max().item<double>() / Math.Max(e.abs().max().item<double>(), 1e-12);
    }
}
