using System.Text.Json.Nodes;

namespace PruneKernel.Tests.Models;

/// <summary>A throw-away copy of a fixture model whose config can be edited, for bad-input tests.</summary>
internal sealed class TempModelFolder : IDisposable
{
    public TempModelFolder(string fixtureName)
    {
        Path = Directory.CreateTempSubdirectory("pk-model-").FullName;
        foreach (var file in Directory.GetFiles(Fixtures.Model(fixtureName)))
        {
            System.IO.File.Copy(file, System.IO.Path.Combine(Path, System.IO.Path.GetFileName(file)));
        }
    }

    public string Path { get; }

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public void EditConfig(Action<JsonObject> edit)
    {
        var config = (JsonObject)JsonNode.Parse(System.IO.File.ReadAllText(File("config.json")))!;
        edit(config);
        System.IO.File.WriteAllText(File("config.json"), config.ToJsonString());
    }

    public void Dispose() => Directory.Delete(Path, recursive: true);
}
